// recover_guest() after a CloudVMI process died, lost its connection or met an error at
// every single step of the shadow bootstrap and of the first batches.
#include <catch2/catch.hpp>
#include <climits>
#include <cstring>
#include <set>
#include <sstream>

#include "common/log.h"
#include "common/strings.h"
#include "fake_guest.h"
#include "redirector/inject/syscall_injector.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/recovery/recovery.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/shadow/syscall_batch.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_test_helpers.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;
using namespace cloudvmi::x86abi;
using B = SyscallBatch;

namespace {

// FAKE_N picks one case to debug: then its log is wanted (CLOUDVMI_LOG=debug shows it;
// FAKE_DEBUG describes failing cases, FAKE_TRACE lists the session's requests).
log::Level quiet_level() {
    return std::getenv("FAKE_N") ? log::Level::kDebug : log::Level::kError;
}

constexpr int64_t kSandboxedPid = 500;  // root under a seccomp filter
constexpr int64_t kNoExecPid = 600;     // root, may not make memory executable

// Three root processes come by before the sleeper and are refused at each step of the
// vetting: the seccomp filter (before anything changes), executable memory (after the
// region is mapped), the mount namespace (after a batch ran in it).
FakeOptions recovery_guest() {
    FakeOptions o;
    o.vcpus = 2;
    o.container = true;
    o.container_sleep_ms = 1;
    o.sleeper_delay_ms = 150;
    ProcessSpec sandboxed;
    sandboxed.pid = kSandboxedPid;
    sandboxed.comm = "sandboxed";
    sandboxed.seccomp = 2;
    sandboxed.loop = {Step::sleep(1)};
    ProcessSpec noexec;
    noexec.pid = kNoExecPid;
    noexec.comm = "noexec";
    noexec.deny_exec = true;
    noexec.loop = {Step::sleep(2)};
    o.extra = {sandboxed, noexec};
    return o;
}

// Shorter than the defaults (the guest answers within milliseconds or never), so that
// the cases where something waits in vain stay quick.
ShadowOptions quick_options() {
    ShadowOptions o;
    o.attach_timeout = Millis(5000);
    o.acquire_timeout = Millis(1000);
    o.batch_timeout = Millis(2000);
    o.recovery_timeout = Millis(5000);
    return o;
}

// The thread stands where its own syscall returned, every register its own: in user mode
// as sysretq leaves it, or still at sysretq if it never ran a syscall of ours.
bool given_back(FakeGuest& g, int64_t tid, const kvm_regs& at_sysret) {
    auto t = g.thread(tid);
    if (!t) return false;
    kvm_regs want = at_sysret;
    if (t->cpu.user_mode()) {
        want.rip = at_sysret.rcx;
        want.rflags = (at_sysret.r11 & 0x3C7FD7) | 2;
    }
    return std::memcmp(&t->cpu.regs, &want, sizeof want) == 0;
}

// The thread the record names as borrowed, found by its address space and its user stack
// pointer, must be given back bit for bit. Where recovery also ends a shadow, it lets the
// guest run afterwards: the thread has moved on, and its own checks on its next syscall
// returns (see leftovers()) stand for this one.
std::string thread_problem(FakeGuest& g, const RecoveryRecord& record) {
    if (record.thread_phase == ThreadPhase::kNone) return "";
    if (record.shadow_phase != ShadowPhase::kNone) return "";
    for (const auto& p : g.processes()) {
        if (p.cr3 != SyscallInjector::address_space(record.thread_cr3)) continue;
        for (int64_t tid : p.tids) {
            auto t = g.thread(tid);
            if (!t || t->cpu.regs.rsp != record.thread_regs.rsp) continue;
            if (given_back(g, tid, record.thread_regs)) return "";
            return "the borrowed thread's registers are not its own; ";
        }
    }
    return "the borrowed thread is gone; ";
}

// What a CloudVMI session does first: create the shadow, run two batches, park.
void session(GuestAccess& g, RecoveryLog& log) {
    auto k = fixture_entry_points();
    auto created = ShadowProcess::create(g, k, log, quick_options());
    if (!created) return;
    ShadowProcess& s = **created;
    B b;
    b.add(kGetpid, {});
    (void)s.execute(b);
    (void)s.park();
    B m;
    auto path = m.input_string("/proc/meminfo");
    auto fd =
        m.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(path), B::imm(kORdonly), B::imm(0)}, true);
    auto data = m.output(4096);
    auto rd = m.add(kRead, {B::result_of(fd), B::buf(data), B::imm(4096)});
    m.filled_by(data, rd, B::Fill::kResultBytes);
    m.add(kClose, {B::result_of(fd)});
    (void)s.execute(m);
    (void)s.park();
}

// Nothing of a session may be left in the guest, and the guest must run on as if it had
// never been touched: same processes, no zombie, no shadow region anywhere, every
// workload thread making syscalls with its registers intact.
std::string leftovers(FakeGuest& g, const RecoveryLog& after,
                      std::set<int64_t> want = {kInitPid, kSleeperPid, kWorkerPid, kContainerPid,
                                                kSandboxedPid, kNoExecPid}) {
    std::ostringstream bad;
    if (!g.armed_breakpoints().empty()) bad << "breakpoints still armed; ";
    if (g.running()) bad << "guest left running by recovery; ";
    if (!after.current().nothing_to_undo()) bad << "recovery log not clean; ";
    std::map<int64_t, uint64_t> progress;
    for (int64_t pid : want) {
        if (pid == kInitPid) continue;
        if (auto t = g.thread(pid)) progress[pid] = t->checked_returns;
    }
    if (!g.running() && !g.resume()) bad << "cannot resume; ";
    g.advance(400);
    if (!g.interrupt(Deadline::after_ms(100))) bad << "cannot interrupt; ";
    std::set<int64_t> pids;
    for (const auto& p : g.processes()) {
        pids.insert(p.pid);
        if (p.zombie) {
            bad << "zombie pid " << p.pid << " (" << p.comm << ", parent " << p.ppid
                << ", exit_signal " << p.exit_signal << "); ";
        } else if (!want.count(p.pid)) {
            bad << "stray process " << p.pid << " (" << p.comm << ", parent " << p.ppid << "); ";
        }
        if (g.has_mapping_in(p.pid, SyscallInjector::kShadowBandStart,
                             SyscallInjector::kShadowBandEnd)) {
            bad << "pid " << p.pid << " (" << p.comm << ") maps a shadow region; ";
        }
    }
    for (int64_t pid : want) {
        if (!pids.count(pid)) bad << "process " << pid << " is gone; ";
    }
    for (const auto& [pid, before] : progress) {
        auto t = g.thread(pid);
        if (t && t->checked_returns <= before) bad << "pid " << pid << " makes no progress; ";
    }
    if (!g.anomalies().empty()) {
        // The first one, without the tick and the register values (random addresses), so
        // that the same failure at different requests is reported once.
        std::string a = g.anomalies().front();
        if (auto colon = a.find(": "); colon != std::string::npos) a = a.substr(colon + 2);
        if (auto regs = a.find(" with corrupted registers"); regs != std::string::npos) {
            a = a.substr(0, regs + std::strlen(" with corrupted registers"));
        }
        bad << "anomaly: " << a;
    }
    return bad.str();
}

enum class Fault {
    kKilled,          // SIGKILL: the record stays as it was at the last successful request
    kConnectionLost,  // every request fails from then on; the session handles it and ends
    kOneError,        // one request fails; the session goes on and ends normally
};

struct Case {
    std::string problem;
    RecoveryRecord record;
};

Case run_case(long n, Fault fault) {
    FakeGuest g(recovery_guest());
    RecoveryLog log;
    std::optional<RecoveryRecord> frozen;
    {
        FailingGuest conn(g, n, fault == Fault::kOneError);
        if (fault == Fault::kKilled) conn.on_trip([&] { frozen = log.current(); });
        if (std::getenv("FAKE_TRACE")) {
            // Every request of the session, numbered like n, with the record as it stands.
            conn.before_call([&](const char* what) {
                std::fprintf(stderr, "request %ld: %s (thread %u, landing %s, shadow %u)\n",
                             conn.calls(), what, static_cast<unsigned>(log.current().thread_phase),
                             hex_u64(log.current().landing).c_str(),
                             static_cast<unsigned>(log.current().shadow_phase));
            });
        }
        session(conn, log);
    }
    Case c;
    c.record = frozen ? *frozen : log.current();
    if (fault == Fault::kOneError) {
        if (g.running()) (void)g.interrupt(Deadline::after_ms(100));
    } else {
        // QEMU keeps a running VM running until it stops on one of the dead client's
        // breakpoints, then leaves it paused; the next attach finds it stopped.
        g.client_died(static_cast<uint64_t>(n % 7) * 11);
    }
    RecoveryLog after;
    auto report = recover_guest(g, c.record, after, quick_options());
    if (report) {
        c.problem = thread_problem(g, c.record);  // before leftovers() lets the guest run
        c.problem += leftovers(g, after);
    } else {
        c.problem = "recover_guest failed: " + report.error().describe();
    }
    if (!c.problem.empty() && std::getenv("FAKE_DEBUG")) {
        std::fprintf(stderr,
                     "n=%ld fault=%d record: thread %u shadow %u pid %lld cr3 %llx; report: %s; "
                     "problem: %s\n",
                     n, static_cast<int>(fault), static_cast<unsigned>(c.record.thread_phase),
                     static_cast<unsigned>(c.record.shadow_phase),
                     static_cast<long long>(c.record.shadow_pid),
                     static_cast<unsigned long long>(c.record.shadow_cr3),
                     report ? report->describe().c_str() : "-", c.problem.c_str());
    }
    return c;
}

long calls_of_full_session() {
    FakeGuest g(recovery_guest());
    RecoveryLog log;
    FailingGuest counting(g, LONG_MAX);
    session(counting, log);
    // Each refusal happened where it should, and the sleeper gave the shadow.
    auto injected = [&](int64_t pid) { return injected_beyond_pid_queries(g, pid); };
    CHECK(only_vetted(g, kSandboxedPid));
    CHECK(injected(kSandboxedPid) == std::set<uint64_t>{kGetuid, kPrctl});
    CHECK(injected(kNoExecPid) == std::set<uint64_t>{kGetuid, kPrctl, kMmap, kMprotect, kMunmap});
    CHECK(injected(kContainerPid) ==
          std::set<uint64_t>{kGetuid, kPrctl, kMmap, kMprotect, kReadlinkat, kNewfstatat, kMunmap});
    CHECK(injected(kSleeperPid).count(kClone));
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
    return counting.calls();
}

void sweep(Fault fault, bool check_phases) {
    test::ScopedLogLevel quiet{quiet_level()};
    long total = calls_of_full_session();
    REQUIRE(total > 100);
    std::map<std::string, std::vector<long>> failures;
    std::set<std::pair<ThreadPhase, ShadowPhase>> phases;
    for (long n = 0; n <= total; ++n) {
        if (const char* only = std::getenv("FAKE_N"); only && std::atol(only) != n) continue;
        Case c = run_case(n, fault);
        phases.insert({c.record.thread_phase, c.record.shadow_phase});
        if (!c.problem.empty()) failures[c.problem].push_back(n);
    }
    if (check_phases) {
        // Every phase of the bootstrap and of the batches was interrupted at least once.
        CHECK(phases.count({ThreadPhase::kNone, ShadowPhase::kNone}));
        CHECK(phases.count({ThreadPhase::kHeld, ShadowPhase::kNone}));
        CHECK(phases.count({ThreadPhase::kInFlight, ShadowPhase::kNone}));
        CHECK(phases.count({ThreadPhase::kHeld, ShadowPhase::kStarting}));
        CHECK(phases.count({ThreadPhase::kInFlight, ShadowPhase::kStarting}));
        CHECK(phases.count({ThreadPhase::kNone, ShadowPhase::kStarting}));
        CHECK(phases.count({ThreadPhase::kNone, ShadowPhase::kHeld}));
        CHECK(phases.count({ThreadPhase::kNone, ShadowPhase::kBatchInFlight}));
        CHECK(phases.count({ThreadPhase::kNone, ShadowPhase::kParked}));
    }
    for (const auto& [problem, ns] : failures) {
        std::ostringstream at;
        for (long n : ns)
            at << n << " ";
        INFO("failure at request(s) " << at.str() << "of " << total);
        CHECK(problem == "");
    }
}

}  // namespace

TEST_CASE("fake recovery: a session killed at any request is undone by recover_guest", "[fake]") {
    sweep(Fault::kKilled, true);
}

TEST_CASE("fake recovery: a session whose connection drops at any request is undone", "[fake]") {
    sweep(Fault::kConnectionLost, false);
}

TEST_CASE("fake recovery: one failed request anywhere leaves a guest recovery can clean",
          "[fake]") {
    sweep(Fault::kOneError, false);
}

// --- the same situations, one at a time ---

TEST_CASE("fake recovery: a thread killed inside an injected syscall is waited for and given back",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    // The session dies while the hijacked thread sleeps in an injected nanosleep, with a
    // region mapped in its process (as during the bootstrap's wait4).
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    int64_t pid = 0, tid = 0;
    uint64_t region = 0;
    kvm_regs original{};
    {
        FailingGuest conn(g, LONG_MAX);
        SyscallInjector inj(conn, k, log, Deadline::after_ms(5000));
        REQUIRE(inj.hijack());
        tid = *g.thread_on_vcpu(inj.vcpu());
        pid = g.thread(tid)->pid;
        original = inj.original_regs();
        uint64_t hint = SyscallInjector::kShadowBandStart + 0x100000000ULL;
        log.edit().parent_region = hint;
        log.commit();
        region =
            *inj.syscall(kMmap, {hint, SHADOW_PARENT_MAP_SIZE, kProtRead | kProtWrite,
                                 kMapShared | kMapAnonymous | kMapPopulate | kMapFixedNoreplace,
                                 ~uint64_t{0}, 0});
        REQUIRE(region == hint);
        Timespec ts{0, 300'000'000};
        REQUIRE(
            inj.write_memory(region, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
        conn.die_at_next_wait();
        auto r = inj.syscall(kNanosleep, {region, 0});
        REQUIRE_FALSE(r);
        CHECK(r.error().code() == ECONNRESET);
        CHECK(log.current().thread_phase == ThreadPhase::kInFlight);
    }  // the injector's destructor only meets a dead connection
    g.client_died(10);
    REQUIRE(g.thread(tid)->sched == SchedState::kBlocked);
    RecoveryLog after;
    auto report = recover_guest(g, log.current(), after, ShadowOptions{});
    REQUIRE(report);
    CHECK(report->thread_restored);
    CHECK(report->parent_region_unmapped);
    CHECK(g.armed_breakpoints().empty());
    CHECK(given_back(g, tid, original));
    CHECK_FALSE(g.has_mapping_in(pid, region, region + SHADOW_REGION_SIZE));
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid, kWorkerPid}) == "");
}

TEST_CASE("fake recovery: killed between moving the landing and the syscall that returns there",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    // set_landing() journals the new landing while the thread still stands at the old
    // one; the next syscall journals itself in flight before it writes the registers.
    // Killed in between, the thread waits in user mode at its old landing, with the
    // registers of our last syscall. Recovery must neither lose it nor let it run its own
    // code with our registers.
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    std::optional<RecoveryRecord> frozen;
    int64_t tid = 0;
    kvm_regs original{};
    uint64_t region = 0;
    {
        FailingGuest conn(g, LONG_MAX);
        conn.on_trip([&] { frozen = log.current(); });
        SyscallInjector inj(conn, k, log, Deadline::after_ms(5000));
        REQUIRE(inj.hijack());
        tid = *g.thread_on_vcpu(inj.vcpu());
        original = inj.original_regs();
        uint64_t hint = SyscallInjector::kShadowBandStart + 0x200000000ULL;
        log.edit().parent_region = hint;
        log.commit();
        region =
            *inj.syscall(kMmap, {hint, SHADOW_PARENT_MAP_SIZE, kProtRead | kProtWrite,
                                 kMapShared | kMapAnonymous | kMapPopulate | kMapFixedNoreplace,
                                 ~uint64_t{0}, 0});
        REQUIRE(region == hint);
        REQUIRE(inj.write_memory(region, ShadowCode::bytes()));
        REQUIRE(*inj.syscall(kMprotect, {region, 0x1000, kProtRead | kProtExec}) == 0);
        REQUIRE(inj.set_landing(region + ShadowCode::child_entry()));
        conn.die_on_inject(kGetppid);
        REQUIRE_FALSE(inj.syscall(kGetppid, {}));
    }
    REQUIRE(frozen);
    CHECK(frozen->thread_phase == ThreadPhase::kInFlight);
    CHECK(frozen->landing == region + ShadowCode::child_entry());
    CHECK(g.thread(tid)->cpu.regs.rip == original.rcx);  // where the thread really stands
    g.client_died();
    RecoveryLog after;
    auto report = recover_guest(g, *frozen, after, quick_options());
    REQUIRE(report);
    CHECK(report->thread_restored);
    CHECK(report->parent_region_unmapped);
    CHECK(given_back(g, tid, original));
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid}) == "");
}

TEST_CASE("fake recovery: killed after the clone, before the wait4, leaves no zombie helper",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    // Killed as syscall(wait4) reads the thread's registers, before it journals anything:
    // the record holds the thread at sysret, back from the clone.
    std::optional<RecoveryRecord> frozen, at_snapshot;
    {
        FailingGuest conn(g, LONG_MAX);
        conn.before_call([&](const char* what) {
            if (std::strcmp(what, "snapshot") == 0) at_snapshot = log.current();
        });
        conn.on_trip([&] { frozen = at_snapshot; });
        conn.die_on_inject(kWait4);
        auto created = ShadowProcess::create(conn, k, log, ShadowOptions{});
        REQUIRE_FALSE(created);
    }
    REQUIRE(frozen);
    CHECK(frozen->thread_phase == ThreadPhase::kHeld);
    CHECK(frozen->landing == frozen->parent_region + ShadowCode::child_entry());
    CHECK(frozen->shadow_phase == ShadowPhase::kStarting);
    g.client_died();
    RecoveryLog after;
    auto report = recover_guest(g, *frozen, after, ShadowOptions{});
    REQUIRE(report);
    CHECK(report->thread_restored);
    CHECK(report->parent_region_unmapped);
    CHECK(report->shadow_ended);
    // The helper S1 exited with exit_signal 0: only a wait4(__WALL) reaps it; its parent,
    // the hijacked process, never will.
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid}) == "");
}

TEST_CASE("fake recovery: killed while starting a second shadow after a refused first one",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    // The first hijacked process is in another mount namespace: it is refused before any
    // clone; the session dies while the second one starts its shadow.
    FakeGuest g(FakeOptions{
        .sleeper_delay_ms = 60, .worker = false, .container = true, .container_sleep_ms = 1});
    auto k = fixture_entry_points();
    RecoveryLog log;
    std::optional<RecoveryRecord> frozen;
    {
        FailingGuest conn(g, LONG_MAX);
        conn.on_trip([&] { frozen = log.current(); });
        conn.die_on_inject(kMunmap, 2);  // the second attempt's, after its clone and wait4
        auto created = ShadowProcess::create(conn, k, log, ShadowOptions{});
        REQUIRE_FALSE(created);
    }
    REQUIRE(frozen);
    CHECK(frozen->shadow_phase == ShadowPhase::kStarting);
    CHECK(frozen->shadow_cr3 == 0);  // the new shadow was never caught
    g.client_died();
    RecoveryLog after;
    auto report = recover_guest(g, *frozen, after, ShadowOptions{});
    REQUIRE(report);
    CHECK(report->shadow_ended);
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid, kContainerPid}) == "");
}

TEST_CASE("fake recovery: a connection lost during a batch does not make the shadow forgotten",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    int64_t shadow = 0;
    {
        FailingGuest conn(g, LONG_MAX);
        auto created = ShadowProcess::create(conn, k, log, ShadowOptions{});
        REQUIRE(created);
        shadow = (*created)->pid();
        REQUIRE((*created)->park());
        conn.die_at_next_wait();
        B b;
        b.add(kGetpid, {});
        REQUIRE_FALSE((*created)->execute(b));
    }
    // The session ends; the shadow runs on in the guest. The log must still name it.
    CHECK(g.process(shadow));
    CHECK(log.current().shadow_phase != ShadowPhase::kNone);
    g.client_died(50);
    RecoveryLog after;
    auto report = recover_guest(g, log.current(), after, ShadowOptions{});
    REQUIRE(report);
    CHECK(report->shadow_ended);
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid}) == "");
}

TEST_CASE(
    "fake recovery: a breakpoint that cannot be put back after a step over does not let "
    "the hijacked thread escape",
    "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    FakeGuest g(FakeOptions{.vcpus = 2, .container = true});
    auto k = fixture_entry_points();
    RecoveryLog log;
    int64_t tid = 0;
    {
        FailingGuest conn(g, LONG_MAX);
        SyscallInjector inj(conn, k, log, Deadline::after_ms(3000));
        REQUIRE(inj.hijack());
        tid = *g.thread_on_vcpu(inj.vcpu());
        uint64_t page =
            *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                                 kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
        Timespec ts{0, 50'000'000};
        REQUIRE(
            inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
        // The stub refuses to re-insert the breakpoint once, after the first step over a
        // foreign thread.
        bool stepped = false, failed = false;
        conn.before_call([&](const char* what) {
            if (std::strcmp(what, "step") == 0) stepped = true;
            if (stepped && !failed && std::strcmp(what, "insert_breakpoint") == 0) {
                failed = true;
                conn.fail_this_call();
            }
        });
        auto r = inj.syscall(kNanosleep, {page, 0});
        CHECK(failed);
        (void)r;
        (void)inj.release();
    }
    // Whatever the injector reported, the thread must not run its own code with our
    // registers.
    if (g.running()) REQUIRE(g.interrupt(Deadline::after_ms(100)));
    RecoveryLog after;
    if (!log.current().nothing_to_undo())
        REQUIRE(recover_guest(g, log.current(), after, quick_options()));
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid, kWorkerPid, kContainerPid}) == "");
    CHECK(g.thread(tid)->checked_returns > 0);
}

TEST_CASE("fake recovery: a bootstrap that fails before the clone unmaps the region it mapped",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    ShadowOptions o = quick_options();
    o.max_bootstrap_attempts = 1;
    {
        FailingGuest conn(g, LONG_MAX);
        bool failed = false;
        // The stub refuses the write of the shadow code into the new region.
        conn.before_call([&](const char* what) {
            if (!failed && std::strcmp(what, "write_virtual") == 0) {
                failed = true;
                conn.fail_this_call();
            }
        });
        auto created = ShadowProcess::create(conn, k, log, o);
        REQUIRE_FALSE(created);
        CHECK(failed);
    }
    CHECK_FALSE(g.running());
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.has_mapping_in(kSleeperPid, SyscallInjector::kShadowBandStart,
                                 SyscallInjector::kShadowBandEnd));
    RecoveryLog after;
    REQUIRE(recover_guest(g, log.current(), after, o));
    CHECK(leftovers(g, after, {kInitPid, kSleeperPid}) == "");
}

TEST_CASE("fake recovery: a borrowed thread killed after the session died is not waited for",
          "[fake]") {
    test::ScopedLogLevel quiet{quiet_level()};
    // The session dies while the thread sleeps in an injected nanosleep; then the guest
    // kills the thread's process. Recovery finds its address space gone within one slice
    // instead of waiting out its whole timeout for a thread that never comes back.
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    int64_t pid = 0;
    {
        FailingGuest conn(g, LONG_MAX);
        SyscallInjector inj(conn, k, log, Deadline::after_ms(5000));
        REQUIRE(inj.hijack());
        pid = inj.pid();
        REQUIRE(pid != kInitPid);
        uint64_t page =
            *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                                 kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
        Timespec ts{100, 0};
        REQUIRE(
            inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
        conn.die_at_next_wait();
        REQUIRE_FALSE(inj.syscall(kNanosleep, {page, 0}));
        CHECK(log.current().thread_phase == ThreadPhase::kInFlight);
    }
    g.client_died(10);
    REQUIRE(g.kill_process(pid));
    ShadowOptions options;
    options.recovery_timeout = Millis(60000);
    auto before = Clock::now();
    RecoveryLog after;
    auto report = recover_guest(g, log.current(), after, options);
    REQUIRE(report);
    CHECK(report->thread_gone);
    CHECK_FALSE(report->thread_restored);
    CHECK(elapsed_ms(before) < 3 * SyscallInjector::kLivenessSlice.count());
    CHECK(g.armed_breakpoints().empty());
    CHECK(after.current().thread_phase == ThreadPhase::kNone);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}
