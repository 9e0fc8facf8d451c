// Shared by the libFuzzer targets in fuzz/: invariant checks and log silencing.
//
// A target returns normally for any input, accepted or refused; a broken invariant, a
// sanitizer report, an uncaught exception, a leak or a hang is a finding.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string_view>

#include "common/log.h"

// Aborts (libFuzzer saves the input) when an invariant of the parser does not hold.
#define FUZZ_CHECK(cond)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            std::fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            std::abort();                                                                      \
        }                                                                                      \
    } while (0)

namespace cloudvmi::fuzz {

// Parsers log what they refuse; the messages are still formatted (so they are fuzzed too)
// but go nowhere.
inline void quiet_logs() {
    log::set_output_file("/dev/null");
    log::set_level(log::Level::kTrace);
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

inline std::span<const uint8_t> as_bytes(const uint8_t* data, size_t size) {
    return {data, size};
}

}  // namespace cloudvmi::fuzz

// Every target silences the logs once, before the first input.
#define FUZZ_QUIET_LOGS()                                \
    extern "C" int LLVMFuzzerInitialize(int*, char***) { \
        cloudvmi::fuzz::quiet_logs();                    \
        return 0;                                        \
    }
