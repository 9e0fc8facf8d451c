// Fuzzes the recovery log reader (redirector/journal/recovery_log.h RecoveryLog::parse, what
// read_file does with a log file's bytes): the guardian and the next attach trust what it
// returns, so whatever a corrupt or forged file holds must come out bounded.
//
// Input: the bytes of a log file.
#include <cstring>

#include "fuzz/fuzz_check.h"
#include "redirector/journal/recovery_log.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto r = RecoveryLog::parse(fuzz::as_bytes(data, size), "fuzz.log");
    if (!r) {
        FUZZ_CHECK(r.error().code() == EINVAL);
        return 0;
    }
    RecoveryRecord rec = *r;
    FUZZ_CHECK(rec.magic == RecoveryRecord::kMagic && rec.version == RecoveryRecord::kVersion);
    FUZZ_CHECK(rec.breakpoint_count <= RecoveryRecord::kMaxBreakpoints);
    FUZZ_CHECK(std::strlen(rec.endpoint) < sizeof rec.endpoint);
    // What the readers then do with it.
    (void)rec.nothing_to_undo();
    (void)rec.about_earlier_vm_run(1);
    for (uint32_t i = 0; i < rec.breakpoint_count; ++i)
        FUZZ_CHECK(rec.has_breakpoint(rec.breakpoints[i]));
    uint32_t before = rec.breakpoint_count;
    rec.add_breakpoint(0x1234);
    FUZZ_CHECK(rec.breakpoint_count <= RecoveryRecord::kMaxBreakpoints);
    rec.remove_breakpoint(0x1234);
    FUZZ_CHECK(rec.breakpoint_count <= before);
    return 0;
}
