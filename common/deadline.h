// A point in time after which a blocking operation must give up.
//
// Every wait in CloudVMI is bounded: a request carries a Deadline down to the socket
// poll() that finally blocks, so a dead VM or a hung stub turns into ETIMEDOUT, never a hang.
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>

namespace cloudvmi {

using Clock = std::chrono::steady_clock;
using Millis = std::chrono::milliseconds;
using Micros = std::chrono::microseconds;

class Deadline {
  public:
    explicit Deadline(Clock::time_point at) : at_(at) {}

    static Deadline after(Clock::duration d) { return Deadline(Clock::now() + d); }
    static Deadline after_ms(long ms) { return after(Millis(ms)); }
    static Deadline never() { return Deadline(Clock::time_point::max()); }

    bool expired() const { return Clock::now() >= at_; }
    Clock::time_point when() const { return at_; }

    // Milliseconds left, rounded up, suitable for poll(); -1 means wait forever.
    int poll_timeout_ms() const {
        if (at_ == Clock::time_point::max()) return -1;
        auto left = at_ - Clock::now();
        if (left <= Clock::duration::zero()) return 0;
        auto ms = std::chrono::ceil<Millis>(left).count();
        return static_cast<int>(std::min<long long>(ms, INT_MAX));
    }

    // The earlier of two deadlines.
    Deadline min(Deadline other) const { return Deadline(std::min(at_, other.at_)); }

  private:
    Clock::time_point at_;
};

inline double elapsed_ms(Clock::time_point since) {
    return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

}  // namespace cloudvmi
