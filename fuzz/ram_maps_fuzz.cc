// Fuzzes the reading of QEMU's /proc/PID/maps for guest-RAM candidates,
// redirector/guest/guest_ram.h (QEMU is trusted less than the kernel: its mappings are named by
// the guest's configuration, memory-backend-file paths included).
//
// Input: the text of a maps file.
#include "fuzz/fuzz_check.h"
#include "redirector/guest/guest_ram.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view text(reinterpret_cast<const char*>(data), size);
    for (const auto& c : ram_candidates(text, 1 << 20)) {
        FUZZ_CHECK(c.size >= (1u << 20));
        FUZZ_CHECK(c.start + c.size > c.start);  // no wrap-around
        FUZZ_CHECK(c.name.size() <= size);
    }
    return 0;
}
