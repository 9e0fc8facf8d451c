// GuestSession on the fake guest, its link injected: attach, batches through the engine it
// chose, a lost shadow replaced, a broken link handed to the recovery log, a clean detach.
#include "redirector/session/guest_session.h"

#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <climits>

#include "common/log.h"
#include "fake_guest.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_test_helpers.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;

namespace {

struct SessionOnFake {
    explicit SessionOnFake(long link_budget = LONG_MAX) : link(guest, link_budget) {
        options.gdb_endpoint = "unix:" + dir.path() + "/vm.gdb";
        options.state_dir = dir.path();
        // With no linger the trap engine parks inside each batch: no background work
        // touches the fake while the test looks at it between batches.
        options.linger = Millis(0);
        options.connect = [this](const gdb::Endpoint&) -> ErrorOr<std::unique_ptr<GuestAccess>> {
            ++connects;
            // QEMU stops the VM when the stub takes a connection.
            if (guest.running()) (void)guest.interrupt(Deadline::after_ms(1000));
            return std::make_unique<FailingGuest>(link, LONG_MAX);  // forwards
        };
    }

    int64_t getpid_in_shadow(GuestSession& s) {
        SyscallBatch b;
        b.add(x86abi::kGetpid, {});
        auto out = s.run(b);
        INFO((out ? "" : out.error().describe()));
        REQUIRE(out);
        REQUIRE(out->results.size() == 1);
        return static_cast<int64_t>(out->results[0]);
    }

    test::TempDir dir{"cloudvmi-session"};
    FakeGuest guest{FakeOptions{.sleeper_delay_ms = 50}};
    FailingGuest link;  // the session's view of the guest, which a test can break
    SessionOptions options;
    int connects = 0;
};

}  // namespace

TEST_CASE("session on the fake guest: the trap engine when QEMU's RAM is out of reach",
          "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    {
        GuestSession s(f.options);
        REQUIRE(s.attach());
        auto st = s.status();
        CHECK(st.state == SessionState::kAttached);
        // The fake has no QEMU process: the mailbox engine is refused and says why.
        CHECK(st.engine.rfind("trap (mailbox: ", 0) == 0);
        CHECK(st.engine.find("not a local process") != std::string::npos);

        int64_t first = f.getpid_in_shadow(s);
        CHECK(first == s.status().shadow_pid);
        CHECK(f.getpid_in_shadow(s) == first);
        st = s.status();
        CHECK(st.batches == 2);
        CHECK(st.shadows_created == 1);
        CHECK(st.vm_cost.stops > st.bootstrap_cost.stops);  // a trap batch stops the VM
        CHECK(f.guest.running());                           // parked between batches
        auto detached = s.detach();
        INFO((detached ? "" : detached.error().describe()));
        REQUIRE(detached);
    }
    CHECK(f.connects == 1);
    CHECK(f.guest.running());
    CHECK(f.guest.armed_breakpoints().empty());
    f.guest.advance(200);  // the shadow, told to exit, does so when it next runs
    CHECK(f.guest.shadow_like_processes().empty());
    INFO(f.guest.anomalies_text());
    CHECK(f.guest.anomalies().empty());
}

TEST_CASE("session on the fake guest: a shadow killed inside the guest is replaced", "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    f.options.shadow.acquire_timeout = Millis(300);
    GuestSession s(f.options);
    int64_t first = f.getpid_in_shadow(s);
    REQUIRE(f.guest.kill_process(first));
    int64_t second = f.getpid_in_shadow(s);
    CHECK(second != first);
    CHECK(s.status().shadows_created == 2);
    CHECK(s.status().shadow_pid == second);
    auto detached = s.detach();
    INFO((detached ? "" : detached.error().describe()));
    REQUIRE(detached);
    f.guest.advance(200);  // the shadow, told to exit, does so when it next runs
    CHECK(f.guest.shadow_like_processes().empty());
    CHECK(f.guest.anomalies().empty());
}

TEST_CASE("session on the fake guest: a broken link fails the session and keeps the log dirty",
          "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    GuestSession s(f.options);
    int64_t shadow = f.getpid_in_shadow(s);
    CHECK(shadow > 0);
    f.link.die_after(0);
    SyscallBatch b;
    b.add(x86abi::kGetpid, {});
    auto out = s.run(b);
    REQUIRE_FALSE(out);
    CHECK(is_transport_error(out.error()));
    CHECK(s.state() == SessionState::kError);
    // What the dead link left in the guest (a shadow) is named in the log for the guardian.
    bool dirty = false;
    for (const auto& e : std::filesystem::directory_iterator(f.dir.path())) {
        if (e.path().extension() != ".log") continue;
        auto rec = RecoveryLog::read_file(e.path());
        if (rec && !rec->clean) dirty = rec->shadow_pid == shadow;
    }
    CHECK(dirty);
}

TEST_CASE("session on the fake guest: the log claims the stub's pause before connecting",
          "[session]") {
    // QEMU pauses the VM when its stub takes a connection. A job killed between that and
    // the VM's next run left it paused for good (seen in the chaos test): its guardian only
    // acts on a dirty log, and took "paused" for the owner's doing.
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    std::optional<RecoveryRecord> at_connect;
    auto forward = f.options.connect;
    f.options.connect = [&](const gdb::Endpoint& e) -> ErrorOr<std::unique_ptr<GuestAccess>> {
        for (const auto& entry : std::filesystem::directory_iterator(f.dir.path())) {
            if (entry.path().extension() != ".log") continue;
            if (auto rec = RecoveryLog::read_file(entry.path())) at_connect = *rec;
        }
        return forward(e);
    };
    GuestSession s(f.options);
    REQUIRE(s.attach());
    REQUIRE(at_connect);
    CHECK(at_connect->owner_pid == ::getpid());
    CHECK_FALSE(at_connect->clean);
    CHECK(at_connect->connect_pause == 1);
    // Once attached the VM has run for us: its pauses are no longer ours to undo.
    std::optional<RecoveryRecord> after;
    for (const auto& entry : std::filesystem::directory_iterator(f.dir.path())) {
        if (entry.path().extension() == ".log") {
            if (auto rec = RecoveryLog::read_file(entry.path())) after = *rec;
        }
    }
    REQUIRE(after);
    CHECK(after->connect_pause == 0);
    REQUIRE(s.detach());
}

TEST_CASE("session on the fake guest: a shadow stuck in a guest syscall is ended by the next",
          "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    f.options.shadow.batch_timeout = Millis(300);
    GuestSession s(f.options);
    int64_t stuck = f.getpid_in_shadow(s);
    // A read that never returns (a fifo nobody writes, a hung network file system).
    SyscallBatch b;
    auto path = b.input_string("/run/blocking");
    auto open = b.add(
        x86abi::kOpenat,
        {SyscallBatch::imm_signed(x86abi::kAtFdcwd), SyscallBatch::buf(path), SyscallBatch::imm(0)},
        true);
    auto data = b.output(16);
    b.add(x86abi::kRead,
          {SyscallBatch::result_of(open), SyscallBatch::buf(data), SyscallBatch::imm(16)});
    auto blocked = s.run(b);
    REQUIRE_FALSE(blocked);
    CHECK(blocked.error().code() == ETIMEDOUT);

    // The next request gets a new shadow, which ends the stuck one (its comm still says it
    // is a shadow: the pid was not reused).
    int64_t next = f.getpid_in_shadow(s);
    CHECK(next != stuck);
    CHECK(s.status().stuck_shadows_ended == 1);
    REQUIRE(s.detach());
    f.guest.advance(200);
    auto gone = f.guest.process(stuck);
    CHECK((!gone || gone->zombie));
    CHECK(f.guest.shadow_like_processes().empty());
    CHECK(f.guest.anomalies().empty());
}

TEST_CASE("session on the fake guest: a state directory open to others is refused", "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    REQUIRE(::chmod(f.dir.path().c_str(), 0777) == 0);
    GuestSession s(f.options);
    auto attached = s.attach();
    REQUIRE_FALSE(attached);
    CHECK(attached.error().code() == EPERM);
    CHECK(attached.error().message().find("chmod 700") != std::string::npos);
    CHECK(f.connects == 0);  // refused before the VM is touched
}

TEST_CASE("file operations on the fake guest: too big is an error, never a cut", "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    GuestSession s(f.options);
    GuestFileOps ops(s);
    auto whole = ops.read_file("/proc/meminfo");
    REQUIRE(whole);
    REQUIRE(whole->size() > 100);
    auto exact = ops.read_file("/proc/meminfo", whole->size());
    REQUIRE(exact);
    CHECK(*exact == *whole);
    auto cut = ops.read_file("/proc/meminfo", whole->size() - 1);
    REQUIRE_FALSE(cut);
    CHECK(cut.error().code() == EFBIG);
    CHECK(cut.error().message().find("/proc/meminfo is larger than") != std::string::npos);

    auto all = ops.list_dir("/proc");
    REQUIRE(all);
    REQUIRE(all->size() > 3);
    CHECK(ops.list_dir("/proc", all->size()));
    auto many = ops.list_dir("/proc", all->size() - 1);
    REQUIRE_FALSE(many);
    CHECK(many.error().code() == E2BIG);
    auto with_stats = ops.list_dir_with_stats("/proc", 2);
    REQUIRE_FALSE(with_stats);
    CHECK(with_stats.error().code() == E2BIG);
    REQUIRE(s.detach());
    CHECK(f.guest.anomalies().empty());
}

namespace {

// The owner's view of the run state, set by the test.
struct ScriptedRunState : VmRunStateSource {
    explicit ScriptedRunState(std::shared_ptr<VmRunState> s) : state(std::move(s)) {}
    std::string describe() const override { return "qmp:scripted"; }
    ErrorOr<VmRunState> current(Deadline) override {
        ++*asked;
        if (state->status.empty()) return make_error(ECONNRESET, "QMP connection lost");
        return *state;
    }
    std::shared_ptr<VmRunState> state;
    std::shared_ptr<int> asked = std::make_shared<int>(0);
};

}  // namespace

TEST_CASE("session on the fake guest: a VM its owner stopped is neither attached to nor run",
          "[session]") {
    test::ScopedLogLevel quiet{log::Level::kError};
    SessionOnFake f;
    auto state = std::make_shared<VmRunState>(VmRunState{false, "paused"});
    f.options.watch_run_state = [&]() -> ErrorOr<std::unique_ptr<VmRunStateSource>> {
        return std::make_unique<ScriptedRunState>(state);
    };
    GuestSession s(f.options);
    auto attached = s.attach();
    REQUIRE_FALSE(attached);
    CHECK(attached.error().code() == EAGAIN);
    CHECK(f.connects == 0);  // the stub is not even connected
    CHECK(s.status().paused_by_others);
    CHECK(s.status().vm_status == "paused");
    CHECK(s.state() == SessionState::kDetached);

    *state = VmRunState{true, "running"};
    REQUIRE(s.attach());
    CHECK(f.connects == 1);
    CHECK_FALSE(s.status().paused_by_others);
    int64_t shadow = f.getpid_in_shadow(s);
    uint64_t stops = s.status().vm_cost.stops;

    // Stopped by its owner between batches (the fake's VM keeps running: only the view
    // says so): no batch, no stop, EAGAIN at once.
    *state = VmRunState{false, "io-error"};
    SyscallBatch b;
    b.add(x86abi::kGetpid, {});
    auto refused = s.run(b);
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code() == EAGAIN);
    CHECK(refused.error().message().find("io-error") != std::string::npos);
    CHECK(s.status().vm_cost.stops == stops);
    CHECK(s.status().vm_status == "io-error");

    *state = VmRunState{true, "running"};
    CHECK(f.getpid_in_shadow(s) == shadow);

    // A lost view fails the request and the session (a transport error: QEMU may be gone);
    // the next request attaches again.
    state->status.clear();
    auto lost = s.run(b);
    REQUIRE_FALSE(lost);
    CHECK(lost.error().code() == ECONNRESET);
    CHECK(s.state() == SessionState::kError);  // QEMU gone, presumably: attached afresh
    *state = VmRunState{true, "running"};
    CHECK(f.getpid_in_shadow(s) > 0);
    CHECK(s.state() == SessionState::kAttached);
    REQUIRE(s.detach());
}
