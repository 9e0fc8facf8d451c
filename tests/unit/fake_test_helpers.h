// Helpers shared by the tests that drive FakeGuest.
#pragma once

#include <catch2/catch.hpp>
#include <cstdint>

#include "common/deadline.h"
#include "common/log.h"
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

// Lets the guest run freely for a while and stops it again; a guest the code under test
// left running (a parked shadow) just runs on.
inline void run_free(FakeGuest& g, uint64_t ticks) {
    if (!g.running()) REQUIRE(g.resume());
    g.advance(ticks);
    REQUIRE(g.interrupt(Deadline::after_ms(100)));
}

}  // namespace cloudvmi::fake
