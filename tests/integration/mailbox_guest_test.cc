// The mailbox engine on a real guest: no VM stop after attach, the same bytes as the trap
// engine, a tampered shadow replaced, and a VM paused by its owner left paused.
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <fstream>
#include <thread>

#include "common/strings.h"
#include "redirector/guest/guest_ram.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "redirector/shadow/shadow_process.h"
#include "tests/integration/guest_fixture.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

bool mailbox_wanted() {
    const char* e = std::getenv("CLOUDVMI_TEST_ENGINE");
    return e == nullptr || std::string_view(e) != "trap";
}

SessionOptions with_engine(const TestGuest& guest, EngineKind engine) {
    auto o = guest.session_options();
    o.engine = engine;
    return o;
}

// Every page of guest RAM that begins with the shadow's code (the live shadow's code page,
// and maybe stale copies in freed pages), as offsets into QEMU's RAM mapping.
std::vector<uint64_t> pages_holding_shadow_code(int qemu_pid, uint64_t& host_base, int& mem_fd) {
    std::ifstream maps("/proc/" + std::to_string(qemu_pid) + "/maps");
    std::string text((std::istreambuf_iterator<char>(maps)), std::istreambuf_iterator<char>());
    auto candidates = ram_candidates(text, 64ULL << 20);
    REQUIRE_FALSE(candidates.empty());
    std::sort(candidates.begin(), candidates.end(),
              [](const auto& a, const auto& b) { return a.size > b.size; });
    host_base = candidates[0].start;
    mem_fd = ::open(("/proc/" + std::to_string(qemu_pid) + "/mem").c_str(), O_RDWR | O_CLOEXEC);
    REQUIRE(mem_fd >= 0);
    auto code = ShadowCode::bytes();
    std::vector<uint64_t> found;
    std::vector<uint8_t> chunk(1 << 20);
    for (uint64_t off = 0; off < std::min(candidates[0].size, kLinearRamLimit);
         off += chunk.size()) {
        auto n = ::pread(mem_fd, chunk.data(), chunk.size(), static_cast<off_t>(host_base + off));
        if (n <= 0) break;
        for (size_t p = 0; p + code.size() <= static_cast<size_t>(n); p += 4096) {
            if (std::memcmp(chunk.data() + p, code.data(), code.size()) == 0)
                found.push_back(off + p);
        }
    }
    return found;
}

}  // namespace

TEST_CASE("the mailbox engine serves requests without stopping the VM", "[guest]") {
    if (!mailbox_wanted()) return;  // the trap engine's configuration runs the other tests
    auto& guest = TestGuest::shared();
    GuestSession session(with_engine(guest, EngineKind::kMailbox));
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    auto st = session.status();
    REQUIRE(st.engine == "mailbox");
    CHECK(read_text(ops, "/proc/version").find("Linux") == 0);
    auto stops_after_attach = session.status().vm_cost.stops;
    // The attach stood the VM still for a while (its stops), the batches since not at all.
    double stopped_after_attach = session.status().vm_cost.stopped_ms;
    CHECK(stopped_after_attach > 0);
    CHECK(stopped_after_attach < st.bootstrap.total_ms + 1000);
    for (int i = 0; i < 30; ++i) {
        CHECK(starts_with(read_text(ops, "/proc/meminfo"), "MemTotal:"));
        auto listing = ops.list_dir("/proc");
        CHECK(listing);
    }
    st = session.status();
    CHECK(st.vm_cost.stops == stops_after_attach);
    CHECK(st.vm_cost.stopped_ms == stopped_after_attach);
    CHECK(st.mailbox.batches >= 60);
    CHECK(st.mailbox.p50_us > 0);
    WARN("mailbox round trips: p50 " << st.mailbox.p50_us << " us, p90 " << st.mailbox.p90_us
                                     << " us, max " << st.mailbox.max_us << " us over "
                                     << st.mailbox.batches << " batches");
    REQUIRE(session.detach());
}

TEST_CASE("the mailbox and trap engines read the same bytes", "[guest]") {
    auto& guest = TestGuest::shared();
    const char* files[] = {"/proc/version", "/etc/cloudvmi-known", "/proc/cmdline",
                           "/proc/self/comm", "/proc/filesystems"};
    std::map<std::string, std::string> by_engine[2];
    EngineKind engines[2] = {EngineKind::kTrap, EngineKind::kMailbox};
    for (int e = 0; e < 2; ++e) {
        GuestSession session(with_engine(guest, engines[e]));
        GuestFileOps ops(session);
        for (const char* f : files)
            by_engine[e][f] = read_text(ops, f);
        auto big = ops.read_head("/proc/kallsyms", 256 * 1024);
        REQUIRE(big);
        by_engine[e]["kallsyms"] = text(*big);
        CHECK(session.status().engine == to_string(engines[e]));
        REQUIRE(session.detach());
    }
    for (const auto& [name, bytes] : by_engine[0]) {
        INFO(name);
        CHECK_FALSE(bytes.empty());
        CHECK(by_engine[1][name] == bytes);
    }
}

TEST_CASE("a shadow whose code is modified from outside is replaced", "[guest]") {
    if (!mailbox_wanted()) return;
    auto& guest = TestGuest::shared();
    GuestSession session(with_engine(guest, EngineKind::kMailbox));
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    REQUIRE(session.status().engine == "mailbox");
    auto first = session.status().shadow_pid;
    uint64_t base = 0;
    int fd = -1;
    auto pages = pages_holding_shadow_code(guest.qemu_pid(), base, fd);
    REQUIRE_FALSE(pages.empty());
    // The first bytes are padding never executed: the shadow runs on, but is not ours.
    for (uint64_t off : pages) {
        uint8_t nop = 0x90;
        REQUIRE(::pwrite(fd, &nop, 1, static_cast<off_t>(base + off)) == 1);
    }
    ::close(fd);
    CHECK(read_text(ops, "/proc/version").find("Linux") == 0);  // served by a new shadow
    auto st = session.status();
    CHECK(st.distrusted == 1);
    CHECK(st.shadow_pid != first);
    CHECK(st.shadows_created == 2);
    CHECK(st.engine == "mailbox");
    REQUIRE(session.detach());
}

TEST_CASE("a VM paused by its owner stays paused and requests fail fast", "[guest]") {
    if (!mailbox_wanted()) return;
    auto& guest = TestGuest::shared();
    REQUIRE(guest.run_state() == "running");
    GuestSession session(with_engine(guest, EngineKind::kMailbox));
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    REQUIRE(session.status().engine == "mailbox");
    auto stops_after_attach = session.status().vm_cost.stops;
    REQUIRE(guest.qmp("stop").find("return") != std::string::npos);
    auto start = Clock::now();
    auto r = ops.read_file("/proc/version");
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == EAGAIN);
    CHECK(elapsed_ms(start) < 2000);
    start = Clock::now();
    CHECK(session.status().paused_by_others);
    CHECK(guest.run_state() == "paused");
    auto again = ops.read_file("/proc/version");  // still paused, faster still
    CHECK_FALSE(again);
    CHECK(elapsed_ms(start) < 1000);
    CHECK(guest.run_state() == "paused");
    REQUIRE(guest.qmp("cont").find("return") != std::string::npos);
    bool served = false;
    for (int i = 0; i < 10 && !served; ++i)
        served = static_cast<bool>(ops.read_file("/proc/version"));  // each waits <= 150 ms
    CHECK(served);
    CHECK_FALSE(session.status().paused_by_others);
    CHECK(session.status().vm_cost.stops == stops_after_attach);
    // Paused again, then detached: the VM stays paused, and the shadow ends by its lease.
    REQUIRE(guest.qmp("stop").find("return") != std::string::npos);
    CHECK_FALSE(ops.read_file("/proc/version"));
    CHECK(session.detach());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(guest.run_state() == "paused");
    REQUIRE(guest.qmp("cont").find("return") != std::string::npos);
    CHECK(guest.run_state() == "running");
}

namespace {

// Whatever a test leaves, the shared guest runs again afterwards.
struct ContinueAtEnd {
    const TestGuest& guest;
    ~ContinueAtEnd() {
        if (guest.run_state() != "running") (void)guest.qmp("cont");
    }
};

}  // namespace

TEST_CASE("a VM paused before cloudvmi came is neither attached to nor resumed", "[guest]") {
    auto& guest = TestGuest::shared();
    REQUIRE(guest.run_state() == "running");
    ContinueAtEnd resume{guest};
    REQUIRE(guest.qmp("stop").find("return") != std::string::npos);
    {
        GuestSession session(guest.session_options());
        GuestFileOps ops(session);
        auto start = Clock::now();
        auto attached = session.attach();
        REQUIRE_FALSE(attached);
        CHECK(attached.error().code() == EAGAIN);
        CHECK(attached.error().message().find("paused") != std::string::npos);
        CHECK(elapsed_ms(start) < 2000);
        auto st = session.status();
        CHECK(st.paused_by_others);
        CHECK(st.vm_status == "paused");
        CHECK(st.vm_cost.stops == 0);  // the stub was not even connected
        auto read = ops.read_file("/proc/version");
        REQUIRE_FALSE(read);
        CHECK(read.error().code() == EAGAIN);
        CHECK(guest.run_state() == "paused");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(guest.run_state() == "paused");
    REQUIRE(guest.qmp("cont").find("return") != std::string::npos);
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    CHECK(read_text(ops, "/proc/version").find("Linux") == 0);
    CHECK(session.status().vm_status == "running");
    CHECK_FALSE(session.status().paused_by_others);
    REQUIRE(session.detach());
    CHECK(guest.run_state() == "running");
}

TEST_CASE("trap engine: a VM paused between batches stays paused", "[guest]") {
    auto& guest = TestGuest::shared();
    REQUIRE(guest.run_state() == "running");
    ContinueAtEnd resume{guest};
    GuestSession session(with_engine(guest, EngineKind::kTrap));
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    CHECK(read_text(ops, "/proc/version").find("Linux") == 0);
    // Past the linger: the shadow is parked and the VM runs.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    REQUIRE(guest.run_state() == "running");
    REQUIRE(guest.qmp("stop").find("return") != std::string::npos);
    auto stops = session.status().vm_cost.stops;
    auto start = Clock::now();
    auto read = ops.read_file("/proc/version");
    REQUIRE_FALSE(read);
    CHECK(read.error().code() == EAGAIN);
    CHECK(elapsed_ms(start) < 1000);
    CHECK(session.status().vm_cost.stops == stops);  // not even interrupted
    CHECK(session.status().paused_by_others);
    CHECK(guest.run_state() == "paused");
    // Resumed by its owner: served again.
    REQUIRE(guest.qmp("cont").find("return") != std::string::npos);
    CHECK(read_text(ops, "/proc/version").find("Linux") == 0);
    CHECK_FALSE(session.status().paused_by_others);
    // Paused again, then detached: it stays paused.
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    REQUIRE(guest.qmp("stop").find("return") != std::string::npos);
    CHECK(session.detach());
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(guest.run_state() == "paused");
    REQUIRE(guest.qmp("cont").find("return") != std::string::npos);
    // Whatever the detach left in the guest, the next session restores and serves.
    GuestSession next(guest.session_options());
    GuestFileOps next_ops(next);
    CHECK(read_text(next_ops, "/proc/version").find("Linux") == 0);
    REQUIRE(next.detach());
    CHECK(guest.run_state() == "running");
}
