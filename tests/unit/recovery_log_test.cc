// redirector/journal/recovery_log.h: the record's breakpoint bookkeeping and the file-backed log
// that survives its writer.
#include "redirector/journal/recovery_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>

#include "common/random.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;

namespace {

using cloudvmi::test::TempDir;

void set_endpoint(RecoveryRecord& r, const char* s) {
    std::memset(r.endpoint, 0, sizeof r.endpoint);
    std::strncpy(r.endpoint, s, sizeof r.endpoint - 1);
}

}  // namespace

TEST_CASE("a default record is clean", "[recovery]") {
    RecoveryRecord r;
    CHECK(r.magic == RecoveryRecord::kMagic);
    CHECK(r.version == RecoveryRecord::kVersion);
    CHECK(r.clean == 1);
    CHECK(r.breakpoint_count == 0);
    CHECK(r.nothing_to_undo());
    CHECK_FALSE(r.has_breakpoint(0));
}

TEST_CASE("RecoveryRecord breakpoint set", "[recovery]") {
    RecoveryRecord r;
    r.add_breakpoint(0x1000);
    r.add_breakpoint(0x2000);
    r.add_breakpoint(0x1000);  // no duplicates
    CHECK(r.breakpoint_count == 2);
    CHECK(r.has_breakpoint(0x1000));
    CHECK(r.has_breakpoint(0x2000));
    CHECK_FALSE(r.has_breakpoint(0x3000));
    CHECK_FALSE(r.nothing_to_undo());

    SECTION("remove the first of several") {
        r.add_breakpoint(0x3000);
        r.remove_breakpoint(0x1000);
        CHECK(r.breakpoint_count == 2);
        CHECK_FALSE(r.has_breakpoint(0x1000));
        CHECK(r.has_breakpoint(0x2000));
        CHECK(r.has_breakpoint(0x3000));
        CHECK(r.breakpoints[2] == 0);  // the freed slot is cleared
    }
    SECTION("remove something absent") {
        r.remove_breakpoint(0x4000);
        CHECK(r.breakpoint_count == 2);
        CHECK(r.has_breakpoint(0x1000));
        CHECK(r.has_breakpoint(0x2000));
    }
    SECTION("remove all") {
        r.remove_breakpoint(0x2000);
        r.remove_breakpoint(0x1000);
        CHECK(r.breakpoint_count == 0);
        CHECK(r.breakpoints[0] == 0);
        CHECK(r.breakpoints[1] == 0);
        CHECK(r.nothing_to_undo());
        r.remove_breakpoint(0x1000);  // on an empty set
        CHECK(r.breakpoint_count == 0);
    }
    SECTION("capacity") {
        for (uint64_t a = 1; a <= 10; ++a)
            r.add_breakpoint(a * 0x10000);
        CHECK(r.breakpoint_count == RecoveryRecord::kMaxBreakpoints);
        CHECK(r.has_breakpoint(0x1000));
        CHECK(r.has_breakpoint(0x60000));
        CHECK_FALSE(r.has_breakpoint(0x70000));  // the 9th distinct address is dropped
        CHECK_FALSE(r.has_breakpoint(0xa0000));
        r.remove_breakpoint(0x2000);
        r.add_breakpoint(0x70000);
        CHECK(r.has_breakpoint(0x70000));
        CHECK(r.breakpoint_count == RecoveryRecord::kMaxBreakpoints);
    }
}

TEST_CASE("nothing_to_undo looks at breakpoints and both phases", "[recovery]") {
    RecoveryRecord r;
    r.thread_phase = ThreadPhase::kHeld;
    CHECK_FALSE(r.nothing_to_undo());
    r.thread_phase = ThreadPhase::kInFlight;
    CHECK_FALSE(r.nothing_to_undo());
    r.thread_phase = ThreadPhase::kNone;
    CHECK(r.nothing_to_undo());
    for (auto p : {ShadowPhase::kStarting, ShadowPhase::kParked, ShadowPhase::kHeld,
                   ShadowPhase::kBatchInFlight}) {
        r.shadow_phase = p;
        CHECK_FALSE(r.nothing_to_undo());
    }
    r.shadow_phase = ShadowPhase::kNone;
    CHECK(r.nothing_to_undo());
}

TEST_CASE("an in-memory log only edits its working copy", "[recovery]") {
    RecoveryLog log;
    CHECK(log.path().empty());
    log.edit().session_id = 42;
    log.edit().add_breakpoint(0x1234);
    log.commit();  // nowhere to publish: must not crash
    CHECK(log.current().session_id == 42);
    CHECK(log.current().has_breakpoint(0x1234));
}

TEST_CASE("RecoveryLog file round trip", "[recovery]") {
    TempDir dir;
    const std::string path = dir.file("journal");

    {
        auto log = RecoveryLog::open_file(path);
        REQUIRE(log.has_value());
        CHECK((*log)->path() == path);

        // Opening publishes a clean record at once.
        auto initial = RecoveryLog::read_file(path);
        REQUIRE(initial.has_value());
        CHECK(initial->clean == 1);
        CHECK(initial->session_id == 0);
        CHECK(initial->nothing_to_undo());

        struct stat st {};
        REQUIRE(::stat(path.c_str(), &st) == 0);
        CHECK((st.st_mode & 0777) == 0600);

        auto& rec = (*log)->edit();
        rec.session_id = 0x1122334455667788ULL;
        rec.owner_pid = 4242;
        set_endpoint(rec, "unix:/run/vm1.gdb");
        rec.syscall_entry = 0xffffffffb1600080ULL;
        rec.sysret = 0xffffffffb1600227ULL;
        rec.iret = 0xffffffffb1601220ULL;
        rec.add_breakpoint(0xffffffffb1600227ULL);
        rec.add_breakpoint(0xffffffffb1601220ULL);
        rec.thread_phase = ThreadPhase::kInFlight;
        rec.thread_vcpu = 2;
        rec.thread_cr3 = 0x17c44000;
        rec.landing = 0x7e1234500010ULL;
        rec.parent_region = 0x7e1234500000ULL;
        rec.helper_pid = 4321;
        rec.thread_regs.rip = 0x7f0000001000ULL;
        rec.thread_regs.rax = 39;
        rec.shadow_phase = ShadowPhase::kParked;
        rec.shadow_pid = 777;
        rec.shadow_region = 0x7e0000000000ULL;

        // Not published before commit.
        auto before = RecoveryLog::read_file(path);
        REQUIRE(before.has_value());
        CHECK(before->session_id == 0);

        (*log)->commit();
        CHECK((*log)->current().clean == 0);  // recomputed on commit

        auto after = RecoveryLog::read_file(path);
        REQUIRE(after.has_value());
        CHECK(after->session_id == 0x1122334455667788ULL);
        CHECK(after->clean == 0);
    }

    // The writer is gone (as after a SIGKILL); the record stays readable.
    auto r = RecoveryLog::read_file(path);
    REQUIRE(r.has_value());
    CHECK(r->magic == RecoveryRecord::kMagic);
    CHECK(r->version == RecoveryRecord::kVersion);
    CHECK(r->session_id == 0x1122334455667788ULL);
    CHECK(r->owner_pid == 4242);
    CHECK(std::string(r->endpoint) == "unix:/run/vm1.gdb");
    CHECK(r->clean == 0);
    CHECK(r->syscall_entry == 0xffffffffb1600080ULL);
    CHECK(r->sysret == 0xffffffffb1600227ULL);
    CHECK(r->iret == 0xffffffffb1601220ULL);
    CHECK(r->breakpoint_count == 2);
    CHECK(r->has_breakpoint(0xffffffffb1600227ULL));
    CHECK(r->has_breakpoint(0xffffffffb1601220ULL));
    CHECK(r->thread_phase == ThreadPhase::kInFlight);
    CHECK(r->thread_vcpu == 2);
    CHECK(r->thread_cr3 == 0x17c44000);
    CHECK(r->landing == 0x7e1234500010ULL);
    CHECK(r->parent_region == 0x7e1234500000ULL);
    CHECK(r->helper_pid == 4321);
    CHECK(r->thread_regs.rip == 0x7f0000001000ULL);
    CHECK(r->thread_regs.rax == 39);
    CHECK(r->shadow_phase == ShadowPhase::kParked);
    CHECK(r->shadow_pid == 777);
    CHECK(r->shadow_region == 0x7e0000000000ULL);
}

TEST_CASE("RecoveryLog commits replace each other", "[recovery]") {
    TempDir dir;
    const std::string path = dir.file("journal");
    auto log = RecoveryLog::open_file(path);
    REQUIRE(log.has_value());
    for (uint64_t i = 1; i <= 5; ++i) {
        (*log)->edit().session_id = i;
        if (i % 2) {
            (*log)->edit().add_breakpoint(0x1000);
        } else {
            (*log)->edit().remove_breakpoint(0x1000);
        }
        (*log)->commit();
        auto r = RecoveryLog::read_file(path);
        REQUIRE(r.has_value());
        CHECK(r->session_id == i);
        CHECK(r->clean == (i % 2 ? 0u : 1u));
        CHECK(r->has_breakpoint(0x1000) == (i % 2 == 1));
    }
}

TEST_CASE("RecoveryLog::open_file keep", "[recovery]") {
    TempDir dir;
    const std::string path = dir.file("journal");
    {
        auto log = RecoveryLog::open_file(path);
        REQUIRE(log.has_value());
        (*log)->edit().session_id = 99;
        (*log)->edit().add_breakpoint(0xabc);
        (*log)->edit().shadow_phase = ShadowPhase::kParked;
        (*log)->edit().shadow_pid = 1234;
        (*log)->commit();
    }
    SECTION("keep=true adopts the last committed record") {
        auto log = RecoveryLog::open_file(path, true);
        REQUIRE(log.has_value());
        CHECK((*log)->current().session_id == 99);
        CHECK((*log)->current().has_breakpoint(0xabc));
        CHECK((*log)->current().shadow_phase == ShadowPhase::kParked);
        CHECK((*log)->current().shadow_pid == 1234);
        CHECK((*log)->current().clean == 0);
        auto r = RecoveryLog::read_file(path);
        REQUIRE(r.has_value());
        CHECK(r->session_id == 99);
        CHECK(r->shadow_pid == 1234);
        CHECK(r->has_breakpoint(0xabc));
    }
    SECTION("keep=false starts clean") {
        auto log = RecoveryLog::open_file(path, false);
        REQUIRE(log.has_value());
        CHECK((*log)->current().session_id == 0);
        CHECK((*log)->current().nothing_to_undo());
        auto r = RecoveryLog::read_file(path);
        REQUIRE(r.has_value());
        CHECK(r->session_id == 0);
        CHECK(r->clean == 1);
        CHECK(r->breakpoint_count == 0);
        CHECK(r->shadow_phase == ShadowPhase::kNone);
    }
    SECTION("keep=true over a garbage file starts clean") {
        test::write_file(path, std::string(100, 'z'));
        auto log = RecoveryLog::open_file(path, true);
        REQUIRE(log.has_value());
        CHECK((*log)->current().session_id == 0);
        auto r = RecoveryLog::read_file(path);
        REQUIRE(r.has_value());
        CHECK(r->clean == 1);
    }
}

TEST_CASE("RecoveryLog::open_file keep=true on a new file", "[recovery]") {
    TempDir dir;
    const std::string path = dir.file("new");
    auto log = RecoveryLog::open_file(path, true);
    REQUIRE(log.has_value());
    CHECK((*log)->current().session_id == 0);
    CHECK((*log)->current().nothing_to_undo());
    CHECK(RecoveryLog::read_file(path).has_value());
}

TEST_CASE("RecoveryLog::open_file in a missing directory", "[recovery]") {
    TempDir dir;
    auto log = RecoveryLog::open_file(dir.file("no-such-dir") + "/journal");
    REQUIRE_FALSE(log.has_value());
    CHECK(log.error().code() == ENOENT);
}

TEST_CASE("read_file sanitises what it reads", "[recovery]") {
    TempDir dir;
    const std::string path = dir.file("journal");
    auto log = RecoveryLog::open_file(path);
    REQUIRE(log.has_value());
    std::memset((*log)->edit().endpoint, 'A', sizeof((*log)->edit().endpoint));  // no NUL
    (*log)->edit().breakpoint_count = 1000;  // as a corrupt writer might leave it
    (*log)->commit();

    auto r = RecoveryLog::read_file(path);
    REQUIRE(r.has_value());
    CHECK(r->endpoint[sizeof r->endpoint - 1] == '\0');
    CHECK(std::strlen(r->endpoint) == sizeof r->endpoint - 1);
    CHECK(r->breakpoint_count == 0);
}

TEST_CASE("read_file rejects what is not a committed log", "[recovery]") {
    TempDir dir;
    SECTION("missing file") {
        auto r = RecoveryLog::read_file(dir.file("absent"));
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOENT);
    }
    SECTION("empty file") {
        auto path = dir.file("empty");
        test::write_file(path, "");
        auto r = RecoveryLog::read_file(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EINVAL);
    }
    SECTION("garbage of the right size") {
        auto good = dir.file("good");
        {
            auto log = RecoveryLog::open_file(good);
            REQUIRE(log.has_value());
        }
        size_t size = test::read_file(good).size();
        REQUIRE(size > 0);
        auto path = dir.file("garbage");
        test::write_file(path, std::string(size, '\x5a'));
        auto r = RecoveryLog::read_file(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EINVAL);
    }
    SECTION("truncated log") {
        auto good = dir.file("good");
        {
            auto log = RecoveryLog::open_file(good);
            REQUIRE(log.has_value());
            (*log)->edit().session_id = 5;
            (*log)->commit();
        }
        std::string bytes = test::read_file(good);
        REQUIRE(RecoveryLog::read_file(good).has_value());
        for (size_t cut : {size_t{0}, size_t{8}, size_t{16}, bytes.size() / 2, bytes.size() - 1}) {
            INFO("cut to " << cut);
            auto path = dir.file("cut" + std::to_string(cut));
            test::write_file(path, bytes.substr(0, cut));
            auto r = RecoveryLog::read_file(path);
            REQUIRE_FALSE(r.has_value());
            CHECK(r.error().code() == EINVAL);
        }
    }
    SECTION("a log whose current record has an unknown format") {
        auto path = dir.file("journal");
        {
            auto log = RecoveryLog::open_file(path);
            REQUIRE(log.has_value());
        }
        std::string bytes = test::read_file(path);
        // File layout: u64 magic, u64 sequence, two record slots; sequence & 1 is current.
        REQUIRE(bytes.size() == 16 + 2 * sizeof(RecoveryRecord));
        uint64_t seq;
        std::memcpy(&seq, bytes.data() + 8, 8);
        size_t slot = 16 + (seq & 1) * sizeof(RecoveryRecord);
        uint32_t magic;
        std::memcpy(&magic, bytes.data() + slot, 4);
        REQUIRE(magic == RecoveryRecord::kMagic);

        std::string bad_magic = bytes;
        bad_magic[slot] ^= 0x01;
        test::write_file(path, bad_magic);
        auto r = RecoveryLog::read_file(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EINVAL);

        std::string bad_version = bytes;
        uint32_t v = RecoveryRecord::kVersion + 1;
        std::memcpy(bad_version.data() + slot + 4, &v, 4);
        test::write_file(path, bad_version);
        auto r2 = RecoveryLog::read_file(path);
        REQUIRE_FALSE(r2.has_value());
        CHECK(r2.error().code() == EINVAL);
    }
}

TEST_CASE("random_u64 varies", "[recovery]") {
    uint64_t a = random_u64();
    bool differs = false;
    for (int i = 0; i < 8 && !differs; ++i)
        differs = random_u64() != a;
    CHECK(differs);
}
