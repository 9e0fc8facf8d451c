// redirector/session/guest_file_ops.h: parsing of the structures the guest kernel writes
// (linux_dirent64, struct stat, struct new_utsname), all of them untrusted.
#include "redirector/session/guest_file_ops.h"

#include <catch2/catch.hpp>
#include <cstddef>
#include <optional>

#include "redirector/x86/guest_abi.h"
#include "tests/unit/test_helpers.h"

using namespace cloudvmi;

namespace {

constexpr uint8_t kDtDir = 4;
constexpr uint8_t kDtReg = 8;
constexpr uint8_t kDtLnk = 10;

// Appends one linux_dirent64 record: d_ino, d_off, d_reclen, d_type, name, NUL, padding to 8.
// reclen_override replaces the computed d_reclen without changing the bytes written;
// terminate=false leaves the name without its NUL and sizes the record to end right after it.
void add_dirent(std::vector<uint8_t>& buf, uint64_t ino, const std::string& name,
                uint8_t type = kDtReg, std::optional<uint16_t> reclen_override = std::nullopt,
                bool terminate = true) {
    size_t start = buf.size();
    size_t reclen = terminate ? (19 + name.size() + 1 + 7) & ~size_t{7} : 19 + name.size();
    buf.resize(start + reclen, 0);
    test::put_u64(buf, start, ino);
    test::put_u64(buf, start + 8, static_cast<uint64_t>(start + reclen));  // d_off: a cookie
    test::put_u16(buf, start + 16, reclen_override.value_or(static_cast<uint16_t>(reclen)));
    buf[start + 18] = type;
    std::memcpy(buf.data() + start + 19, name.data(), name.size());
}

std::vector<std::string> names(const std::vector<GuestDirEntry>& entries) {
    std::vector<std::string> out;
    for (const auto& e : entries)
        out.push_back(e.name);
    return out;
}

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("dirent header layout matches the kernel's", "[fileops]") {
    CHECK(offsetof(x86abi::Dirent64Header, d_ino) == 0);
    CHECK(offsetof(x86abi::Dirent64Header, d_off) == 8);
    CHECK(offsetof(x86abi::Dirent64Header, d_reclen) == 16);
    CHECK(offsetof(x86abi::Dirent64Header, d_type) == 18);
    CHECK(x86abi::kDirent64NameOffset == 19);
}

TEST_CASE("parse_dirents on a well-formed buffer", "[fileops]") {
    std::vector<uint8_t> buf;
    add_dirent(buf, 2, ".", kDtDir);
    add_dirent(buf, 1, "..", kDtDir);
    add_dirent(buf, 131, "hostname", kDtReg);
    add_dirent(buf, 0xffffffffffffff01ULL, "mtab", kDtLnk);
    add_dirent(buf, 7, "caf\xc3\xa9 \t\x01odd", kDtReg);  // any bytes but '/' and NUL

    int skipped = 0;
    auto entries = parse_dirents(buf, &skipped);
    CHECK(skipped == 0);
    REQUIRE(entries.size() == 5);
    CHECK(names(entries) == Names{".", "..", "hostname", "mtab", "caf\xc3\xa9 \t\x01odd"});
    CHECK(entries[0].ino == 2);
    CHECK(entries[0].type == kDtDir);
    CHECK(entries[2].ino == 131);
    CHECK(entries[2].type == kDtReg);
    CHECK(entries[3].ino == 0xffffffffffffff01ULL);
    CHECK(entries[3].type == kDtLnk);

    // skipped is optional.
    CHECK(parse_dirents(buf).size() == 5);
}

TEST_CASE("parse_dirents on empty and tiny buffers", "[fileops]") {
    int skipped = 0;
    CHECK(parse_dirents({}, &skipped).empty());
    std::vector<uint8_t> header_only(19, 0);
    CHECK(parse_dirents(header_only, &skipped).empty());
    std::vector<uint8_t> tiny(5, 0xff);
    CHECK(parse_dirents(tiny, &skipped).empty());
    CHECK(skipped == 0);
}

TEST_CASE("parse_dirents stops at malformed record lengths", "[fileops]") {
    SECTION("reclen running past the buffer") {
        std::vector<uint8_t> buf;
        add_dirent(buf, 10, "first");
        add_dirent(buf, 11, "second", kDtReg, 0x200);
        add_dirent(buf, 12, "third");
        int skipped = 0;
        auto e = parse_dirents(buf, &skipped);
        CHECK(names(e) == Names{"first"});
        CHECK(skipped == 1);
    }
    SECTION("reclen one byte past the buffer") {
        std::vector<uint8_t> buf;
        add_dirent(buf, 10, "first");
        size_t last = buf.size();
        add_dirent(buf, 11, "last");  // 24 bytes, ending the buffer
        REQUIRE(buf.size() == last + 24);
        test::put_u16(buf, last + 16, 25);
        int skipped = 0;
        auto e = parse_dirents(buf, &skipped);
        CHECK(names(e) == Names{"first"});
        CHECK(skipped == 1);
    }
    SECTION("reclen smaller than the header") {
        for (uint16_t bad : {uint16_t{0}, uint16_t{1}, uint16_t{18}, uint16_t{19}}) {
            INFO("reclen " << bad);
            std::vector<uint8_t> buf;
            add_dirent(buf, 10, "first");
            add_dirent(buf, 11, "second", kDtReg, bad);
            add_dirent(buf, 12, "third");
            int skipped = 0;
            auto e = parse_dirents(buf, &skipped);
            CHECK(names(e) == Names{"first"});
            CHECK(skipped == 1);
        }
    }
    SECTION("the first record already malformed") {
        std::vector<uint8_t> buf;
        add_dirent(buf, 10, "x", kDtReg, uint16_t{0});
        int skipped = 0;
        CHECK(parse_dirents(buf, &skipped).empty());
        CHECK(skipped == 1);
    }
}

TEST_CASE("parse_dirents skips unusable names and goes on", "[fileops]") {
    std::vector<uint8_t> buf;
    add_dirent(buf, 1, "good1");
    add_dirent(buf, 2, "no-nul-here", kDtReg, std::nullopt,
               false);  // unterminated within its record
    add_dirent(buf, 3, "good2");
    add_dirent(buf, 4, "a/b");
    add_dirent(buf, 5, "/");
    add_dirent(buf, 6, "");
    add_dirent(buf, 7, std::string(256, 'n'));  // longer than NAME_MAX
    add_dirent(buf, 8, std::string(255, 'm'));  // exactly NAME_MAX: fine
    add_dirent(buf, 9, "good3");

    int skipped = 0;
    auto e = parse_dirents(buf, &skipped);
    CHECK(skipped == 5);
    CHECK(names(e) == Names{"good1", "good2", std::string(255, 'm'), "good3"});
    REQUIRE(e.size() == 4);
    CHECK(e[0].ino == 1);
    CHECK(e[1].ino == 3);
    CHECK(e[2].ino == 8);
    CHECK(e[3].ino == 9);
}

TEST_CASE("parse_dirents: the name ends at the first NUL", "[fileops]") {
    std::vector<uint8_t> buf;
    add_dirent(buf, 1, std::string("abc\0def", 7));
    int skipped = 0;
    auto e = parse_dirents(buf, &skipped);
    CHECK(skipped == 0);
    CHECK(names(e) == Names{"abc"});
}

TEST_CASE("parse_dirents: a name that would run into the next record is unterminated",
          "[fileops]") {
    std::vector<uint8_t> buf;
    add_dirent(buf, 1, "abcde", kDtReg, std::nullopt,
               false);  // reclen 24, name fills it with no NUL
    add_dirent(buf, 2, "next");
    int skipped = 0;
    auto e = parse_dirents(buf, &skipped);
    CHECK(skipped == 1);
    CHECK(names(e) == Names{"next"});
}

TEST_CASE("is_safe_name", "[fileops]") {
    CHECK(is_safe_name("a"));
    CHECK(is_safe_name("file.txt"));
    CHECK(is_safe_name(" spaced name "));
    CHECK(is_safe_name("\xff\xfe"));
    CHECK(is_safe_name(std::string(255, 'x')));
    CHECK_FALSE(is_safe_name(""));
    CHECK_FALSE(is_safe_name("/"));
    CHECK_FALSE(is_safe_name("a/b"));
    CHECK_FALSE(is_safe_name("trailing/"));
    CHECK_FALSE(is_safe_name(std::string_view("a\0b", 3)));
    CHECK_FALSE(is_safe_name(std::string(256, 'x')));
}

TEST_CASE("parse_stat reads the x86-64 struct stat layout", "[fileops]") {
    // Written at the offsets of arch/x86/include/uapi/asm/stat.h, independently of the
    // struct in guest_abi.h.
    std::vector<uint8_t> buf(144, 0);
    test::put_u64(buf, 0, 0x803);                    // st_dev
    test::put_u64(buf, 8, 1234567);                  // st_ino
    test::put_u64(buf, 16, 3);                       // st_nlink
    test::put_u32(buf, 24, 0100644);                 // st_mode
    test::put_u32(buf, 28, 1000);                    // st_uid
    test::put_u32(buf, 32, 100);                     // st_gid
    test::put_u32(buf, 36, 0xdeadbeef);              // __pad0
    test::put_u64(buf, 40, 0x10302);                 // st_rdev
    test::put_u64(buf, 48, 0x123456789ULL);          // st_size
    test::put_u64(buf, 56, 4096);                    // st_blksize
    test::put_u64(buf, 64, 0x91a2c);                 // st_blocks
    test::put_u64(buf, 72, 1700000000);              // st_atime
    test::put_u64(buf, 80, 111111111);               // st_atime_nsec
    test::put_u64(buf, 88, 1700000001);              // st_mtime
    test::put_u64(buf, 96, 222222222);               // st_mtime_nsec
    test::put_u64(buf, 104, 1700000002);             // st_ctime
    test::put_u64(buf, 112, 333333333);              // st_ctime_nsec
    test::put_u64(buf, 120, 0xffffffffffffffffULL);  // __unused
    REQUIRE(buf.size() == 144);
    STATIC_REQUIRE(sizeof(x86abi::Stat) == 144);

    auto s = parse_stat(buf);
    CHECK(s.dev == 0x803);
    CHECK(s.ino == 1234567);
    CHECK(s.nlink == 3);
    CHECK(s.mode == 0100644);
    CHECK(s.uid == 1000);
    CHECK(s.gid == 100);
    CHECK(s.rdev == 0x10302);
    CHECK(s.size == 0x123456789LL);
    CHECK(s.blksize == 4096);
    CHECK(s.blocks == 0x91a2c);
    CHECK(s.atime_sec == 1700000000);
    CHECK(s.atime_nsec == 111111111);
    CHECK(s.mtime_sec == 1700000001);
    CHECK(s.mtime_nsec == 222222222);
    CHECK(s.ctime_sec == 1700000002);
    CHECK(s.ctime_nsec == 333333333);
}

TEST_CASE("parse_stat keeps untrusted values in range", "[fileops]") {
    std::vector<uint8_t> buf(144, 0);
    test::put_u64(buf, 48, static_cast<uint64_t>(-1));  // st_size
    test::put_u64(buf, 72, static_cast<uint64_t>(-5));  // a time before 1970
    test::put_u64(buf, 80, 1999999999);                 // nanoseconds out of range
    test::put_u64(buf, 96, 1000000000);
    test::put_u64(buf, 112, 0xffffffffffffffffULL);
    auto s = parse_stat(buf);
    CHECK(s.size == -1);
    CHECK(s.atime_sec == -5);
    CHECK(s.atime_nsec >= 0);
    CHECK(s.atime_nsec < 1000000000);
    CHECK(s.mtime_nsec >= 0);
    CHECK(s.mtime_nsec < 1000000000);
    CHECK(s.ctime_nsec >= 0);
    CHECK(s.ctime_nsec < 1000000000);
}

TEST_CASE("parse_stat on a short buffer zero-fills the rest", "[fileops]") {
    std::vector<uint8_t> buf(144, 0);
    test::put_u64(buf, 0, 0x803);
    test::put_u64(buf, 8, 42);
    test::put_u32(buf, 24, 040755);
    test::put_u64(buf, 48, 4096);
    auto s = parse_stat(std::span(buf).first(28));
    CHECK(s.dev == 0x803);
    CHECK(s.ino == 42);
    CHECK(s.mode == 040755);
    CHECK(s.size == 0);
    CHECK(s.uid == 0);
}

TEST_CASE("parse_stat on an empty buffer gives zeros", "[fileops]") {
    // An empty vector's data() is null: parse_stat must not hand it to memcpy (undefined
    // behaviour, reported by -fsanitize=undefined).
    std::vector<uint8_t> none;
    auto empty = parse_stat(none);
    CHECK(empty.dev == 0);
    CHECK(empty.ino == 0);
    CHECK(empty.mode == 0);
    CHECK(empty.size == 0);
    CHECK(empty.ctime_nsec == 0);
}

TEST_CASE("parse_utsname", "[fileops]") {
    const char* fields[6] = {
        "Linux",          "debian",
        "6.1.0-56-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)",
        "x86_64",         "(none)"};
    std::vector<uint8_t> buf(x86abi::kUtsnameSize, 0);
    REQUIRE(buf.size() == 390);
    for (size_t i = 0; i < 6; ++i) {
        std::memcpy(buf.data() + i * 65, fields[i], std::strlen(fields[i]));
    }
    auto u = parse_utsname(buf);
    CHECK(u.sysname == "Linux");
    CHECK(u.nodename == "debian");
    CHECK(u.release == "6.1.0-56-amd64");
    CHECK(u.version == "#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)");
    CHECK(u.machine == "x86_64");
    CHECK(u.domainname == "(none)");

    SECTION("an unterminated field stops at its 65 bytes") {
        std::memset(buf.data() + 65, 'N', 65);
        auto v = parse_utsname(buf);
        CHECK(v.nodename == std::string(65, 'N'));
        CHECK(v.release == "6.1.0-56-amd64");
    }
    SECTION("a short buffer yields only the complete fields") {
        auto v = parse_utsname(std::span(buf).first(200));  // fields 0..2 complete
        CHECK(v.sysname == "Linux");
        CHECK(v.nodename == "debian");
        CHECK(v.release == "6.1.0-56-amd64");
        CHECK(v.version.empty());
        CHECK(v.machine.empty());
        CHECK(v.domainname.empty());
    }
    SECTION("an empty buffer") {
        auto v = parse_utsname({});
        CHECK(v.sysname.empty());
        CHECK(v.domainname.empty());
    }
}
