// Fuzzes the parsers of the fixed-layout structures a guest fills in: struct stat
// (newfstatat) and struct new_utsname (uname), redirector/session/guest_file_ops.h. (No statx
// parser exists: the file operations use newfstatat.)
//
// Input: the buffer as the guest filled it; it may be shorter or longer than the struct.
#include <cstring>

#include "fuzz/fuzz_check.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

namespace {

void check_nsec(int64_t nsec) {
    FUZZ_CHECK(nsec >= 0 && nsec < 1000000000);
}

void check_field(const std::string& f) {
    // The kernel terminates each field; an unterminated one is cut at the field's end.
    FUZZ_CHECK(f.size() <= x86abi::kUtsFieldSize);
    FUZZ_CHECK(f.find('\0') == std::string::npos);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    auto bytes = fuzz::as_bytes(data, size);

    GuestStat st = parse_stat(bytes);
    check_nsec(st.atime_nsec);
    check_nsec(st.mtime_nsec);
    check_nsec(st.ctime_nsec);
    if (size >= sizeof(x86abi::Stat)) {
        x86abi::Stat raw;
        std::memcpy(&raw, data, sizeof raw);
        FUZZ_CHECK(st.ino == raw.st_ino && st.mode == raw.st_mode && st.size == raw.st_size);
    }

    GuestUname u = parse_utsname(bytes);
    for (const auto* f :
         {&u.sysname, &u.nodename, &u.release, &u.version, &u.machine, &u.domainname})
        check_field(*f);
    if (size < x86abi::kUtsnameSize) FUZZ_CHECK(u.domainname.empty());
    return 0;
}
