// Fuzzes the scanners kernel discovery runs over guest kernel memory
// (redirector/inject/kernel_discovery.h): the IDT parser and the searches for the syscall entry,
// its return paths and the slow path's iretq. Only their public functions are called.
//
// Input: guest bytes, given to every scanner (as an IDT, as code at the entry, as the
// slow path).
#include "fuzz/fuzz_check.h"
#include "redirector/inject/kernel_discovery.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

namespace {
constexpr uint64_t kEntryAddress = 0xffffffff81e00000ULL;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto bytes = fuzz::as_bytes(data, size);

    auto handlers = parse_idt_handlers(bytes);
    FUZZ_CHECK(handlers.size() <= size / 16);

    if (auto entry = find_syscall_entry_pattern(bytes)) FUZZ_CHECK(*entry < size);

    if (auto paths = find_return_paths(bytes, kEntryAddress)) {
        // sysretq is 3 bytes inside what was looked at.
        FUZZ_CHECK(paths->sysret >= kEntryAddress && paths->sysret - kEntryAddress + 3 <= size);
    }

    if (auto iret = find_iret(bytes)) FUZZ_CHECK(*iret + 2 <= size);
    return 0;
}
