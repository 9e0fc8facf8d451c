// Fuzzes the parser of the linux_dirent64 records a guest's getdents64 returns
// (redirector/session/guest_file_ops.h parse_dirents), and the name check every guest file name
// goes through before it becomes a path component under /vmi (is_safe_name).
//
// Input: the buffer as the guest filled it.
#include <string>

#include "fuzz/fuzz_check.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int skipped = 0;
    auto entries = parse_dirents(fuzz::as_bytes(data, size), &skipped);
    // Every record has at least a header and a terminated one-byte name.
    FUZZ_CHECK(entries.size() + static_cast<size_t>(skipped) <=
               size / (x86abi::kDirent64NameOffset + 1) + 1);
    for (const auto& e : entries) {
        FUZZ_CHECK(is_safe_name(e.name));
        FUZZ_CHECK(e.name.find('/') == std::string::npos);
        FUZZ_CHECK(e.name.find('\0') == std::string::npos);
        FUZZ_CHECK(!e.name.empty() && e.name.size() <= 255);
    }
    std::string_view name = fuzz::as_text(data, size);
    if (is_safe_name(name)) {
        FUZZ_CHECK(!name.empty() && name.size() <= 255);
        FUZZ_CHECK(name.find('/') == std::string_view::npos);
        FUZZ_CHECK(name.find('\0') == std::string_view::npos);
    }
    return 0;
}
