// Helpers shared by the tests that drive FakeGuest.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>
#include <set>

#include "common/deadline.h"
#include "common/log.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_guest.h"

namespace cloudvmi::test {

// Sets the log level for one test and puts the previous one back, so that the failures a
// test provokes on purpose do not flood the output of the whole run.
class ScopedLogLevel {
  public:
    explicit ScopedLogLevel(log::Level level) : saved_(log::level()) { log::set_level(level); }
    ~ScopedLogLevel() { log::set_level(saved_); }
    ScopedLogLevel(const ScopedLogLevel&) = delete;
    ScopedLogLevel& operator=(const ScopedLogLevel&) = delete;

  private:
    log::Level saved_;
};

}  // namespace cloudvmi::test

namespace cloudvmi::fake {

// The syscalls the host injected into a thread, by number.
inline std::set<uint64_t> injected_kinds(const FakeGuest& g, int64_t tid) {
    std::set<uint64_t> out;
    if (auto t = g.thread(tid)) {
        for (const auto& [nr, n] : t->injected_by_nr)
            out.insert(nr);
    }
    return out;
}

// The queries that vet a candidate thread before anything of it changes. Which pid
// queries are asked depends on what the bootstrap has seen before (init, processes found
// in other namespaces).
inline const std::set<uint64_t> kPidQueries = {x86abi::kGetpid, x86abi::kGetppid};
inline const std::set<uint64_t> kVettingSyscalls = {x86abi::kGetpid, x86abi::kGetppid,
                                                    x86abi::kGetuid, x86abi::kPrctl};

// injected_kinds() without the pid queries.
inline std::set<uint64_t> injected_beyond_pid_queries(const FakeGuest& g, int64_t tid) {
    auto kinds = injected_kinds(g, tid);
    for (uint64_t nr : kPidQueries)
        kinds.erase(nr);
    return kinds;
}

// Nothing but vetting queries was injected into the thread.
inline bool only_vetted(const FakeGuest& g, int64_t tid) {
    for (uint64_t nr : injected_kinds(g, tid)) {
        if (!kVettingSyscalls.count(nr)) return false;
    }
    return true;
}

// Lets the guest run freely for a while and stops it again; a guest the code under test
// left running (a parked shadow) just runs on.
inline void run_free(FakeGuest& g, uint64_t ticks) {
    if (!g.running()) REQUIRE(g.resume());
    g.advance(ticks);
    REQUIRE(g.interrupt(Deadline::after_ms(100)));
}

}  // namespace cloudvmi::fake
