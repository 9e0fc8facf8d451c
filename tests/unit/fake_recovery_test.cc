// recover_guest() after a CloudVMI process died (or hit an error) at every single step of
// the shadow bootstrap and of the first batches.
#include <catch2/catch.hpp>

#include <climits>
#include <cstring>
#include <set>
#include <sstream>

#include "common/log.h"
#include "fake_guest.h"
#include "redirector/recovery.h"
#include "redirector/recovery_log.h"
#include "redirector/shadow_process.h"
#include "redirector/syscall_batch.h"
#include "redirector/syscall_injector.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;
using namespace cloudvmi::x86abi;
using B = SyscallBatch;

namespace {

struct QuietLog {
    log::Level saved = log::level();
    QuietLog() { log::set_level(log::Level::kError); }
    ~QuietLog() { log::set_level(saved); }
};

FakeOptions recovery_guest() {
    FakeOptions o;
    o.vcpus = 2;
    o.container = true;
    o.container_sleep_ms = 1;  // tried (and refused) first: two bootstrap attempts
    o.sleeper_delay_ms = 60;
    return o;
}

// What a CloudVMI session does first: create the shadow, run two batches, park.
void session(GuestAccess& g, RecoveryLog& log) {
    auto k = fixture_entry_points();
    auto created = ShadowProcess::create(g, k, log, ShadowOptions{});
    if (!created) return;
    ShadowProcess& s = **created;
    B b;
    b.add(kGetpid, {});
    (void)s.execute(b);
    (void)s.park();
    B m;
    auto path = m.input_string("/proc/meminfo");
    auto fd = m.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(path), B::imm(kORdonly), B::imm(0)}, true);
    auto data = m.output(4096);
    auto rd = m.add(kRead, {B::result_of(fd), B::buf(data), B::imm(4096)});
    m.filled_by(data, rd, B::Fill::kResultBytes);
    m.add(kClose, {B::result_of(fd)});
    (void)s.execute(m);
    (void)s.park();
}

// Checks that nothing of a session is left in the guest, and that the guest runs on
// as if it had never been touched.
std::string leftovers(FakeGuest& g, const RecoveryLog& after) {
    std::ostringstream bad;
    if (!g.armed_breakpoints().empty()) bad << "breakpoints still armed; ";
    if (g.running()) bad << "guest left running by recovery; ";
    if (!after.current().nothing_to_undo()) bad << "recovery log not clean; ";
    std::map<int64_t, uint64_t> progress;
    for (int64_t pid : {kSleeperPid, kWorkerPid, kContainerPid}) {
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
        }
        if (g.has_mapping_in(p.pid, SyscallInjector::kShadowBandStart, SyscallInjector::kShadowBandEnd)) {
            bad << "pid " << p.pid << " (" << p.comm << ") still maps a shadow region; ";
        }
    }
    std::set<int64_t> want = {kInitPid, kSleeperPid, kWorkerPid, kContainerPid};
    for (int64_t pid : pids) {
        if (!want.count(pid)) bad << "stray process " << pid << " (" << g.process(pid)->comm << "); ";
    }
    for (int64_t pid : want) {
        if (!pids.count(pid)) bad << "process " << pid << " died; ";
    }
    for (const auto& [pid, before] : progress) {
        auto t = g.thread(pid);
        if (!t || t->checked_returns <= before) {
            bad << "pid " << pid << " makes no progress (rip " << std::hex
                << (t ? t->cpu.regs.rip : 0) << std::dec << "); ";
        }
    }
    if (!g.anomalies().empty()) bad << "anomalies:\n" << g.anomalies_text();
    return bad.str();
}

long calls_of_full_session() {
    FakeGuest g(recovery_guest());
    RecoveryLog log;
    FailingGuest counting(g, LONG_MAX);
    session(counting, log);
    return counting.calls();
}

}  // namespace

TEST_CASE("fake recovery: a session killed at any step is undone by recover_guest", "[fake]") {
    QuietLog quiet;
    long total = calls_of_full_session();
    REQUIRE(total > 100);
    std::map<std::string, std::vector<long>> failures;
    std::set<std::pair<ThreadPhase, ShadowPhase>> phases_seen;
    for (long n = 0; n <= total; ++n) {
        FakeGuest g(recovery_guest());
        RecoveryLog log;
        {
            FailingGuest dying(g, n);
            session(dying, log);
        }
        const RecoveryRecord record = log.current();
        phases_seen.insert({record.thread_phase, record.shadow_phase});
        // QEMU keeps the VM running until it stops on one of the dead session's
        // breakpoints, then leaves it paused; the next attach finds it stopped.
        g.client_died(static_cast<uint64_t>(n % 7) * 11);
        RecoveryLog after;
        auto report = recover_guest(g, record, after, ShadowOptions{});
        std::string problem;
        if (!report) {
            problem = "recover_guest failed: " + report.error().describe();
        } else {
            problem = leftovers(g, after);
        }
        if (!problem.empty()) failures[problem].push_back(n);
    }
    // Every phase of the bootstrap was interrupted at least once.
    CHECK(phases_seen.count({ThreadPhase::kHeld, ShadowPhase::kNone}));
    CHECK(phases_seen.count({ThreadPhase::kInFlight, ShadowPhase::kNone}));
    CHECK(phases_seen.count({ThreadPhase::kHeld, ShadowPhase::kStarting}));
    CHECK(phases_seen.count({ThreadPhase::kInFlight, ShadowPhase::kStarting}));
    CHECK(phases_seen.count({ThreadPhase::kNone, ShadowPhase::kStarting}));
    CHECK(phases_seen.count({ThreadPhase::kNone, ShadowPhase::kHeld}));
    CHECK(phases_seen.count({ThreadPhase::kNone, ShadowPhase::kBatchInFlight}));
    CHECK(phases_seen.count({ThreadPhase::kNone, ShadowPhase::kParked}));
    for (const auto& [problem, ns] : failures) {
        std::ostringstream at;
        for (long n : ns) at << n << " ";
        INFO("killed after call(s) " << at.str() << "of " << total);
        CHECK(problem == "");
    }
}

TEST_CASE("fake recovery: an error at any step leaves a log from which the guest is restored",
          "[fake]") {
    QuietLog quiet;
    long total = calls_of_full_session();
    std::map<std::string, std::vector<long>> failures;
    for (long n = 0; n < total; ++n) {
        FakeGuest g(recovery_guest());
        RecoveryLog log;
        {
            // One request fails (the stub answers with an error); the session goes on,
            // handles it as it can, and ends (destructors run).
            FailingGuest flaky(g, n, /*transient=*/true);
            session(flaky, log);
        }
        if (g.running()) (void)g.interrupt(Deadline::after_ms(100));
        RecoveryLog after;
        auto report = recover_guest(g, log.current(), after, ShadowOptions{});
        std::string problem;
        if (!report) {
            problem = "recover_guest failed: " + report.error().describe();
        } else {
            problem = leftovers(g, after);
        }
        if (!problem.empty()) failures[problem].push_back(n);
    }
    for (const auto& [problem, ns] : failures) {
        std::ostringstream at;
        for (long n : ns) at << n << " ";
        INFO("one failed request at call(s) " << at.str() << "of " << total);
        CHECK(problem == "");
    }
}

TEST_CASE("fake recovery: a thread killed inside an injected syscall gets its region unmapped",
          "[fake]") {
    QuietLog quiet;
    // The session dies while the hijacked thread sleeps in an injected nanosleep, with a
    // region mapped in its process (as during the bootstrap's wait4): recovery must wait
    // for the syscall, unmap the region and give the thread back.
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    int64_t pid = 0, tid = 0;
    uint64_t region = 0;
    kvm_regs original{};
    {
        FailingGuest conn(g, LONG_MAX);
        SyscallInjector inj(conn, k, log);
        REQUIRE(inj.hijack());
        tid = *g.thread_on_vcpu(inj.vcpu());
        pid = g.thread(tid)->pid;
        original = inj.original_regs();
        uint64_t hint = SyscallInjector::kShadowBandStart + 0x100000000ULL;
        log.edit().parent_region = hint;
        log.commit();
        region = *inj.syscall(kMmap, {hint, 0x100000, kProtRead | kProtWrite,
                                      kMapShared | kMapAnonymous | kMapPopulate | kMapFixedNoreplace,
                                      ~uint64_t{0}, 0});
        REQUIRE(region == hint);
        Timespec ts{0, 300'000'000};
        REQUIRE(inj.write_memory(region, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
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
    CHECK(g.armed_breakpoints().empty());
    kvm_regs now = g.thread(tid)->cpu.regs;
    CHECK(std::memcmp(&now, &original, sizeof now) == 0);
    CHECK(report->parent_region_unmapped);
    CHECK_FALSE(g.has_mapping_in(pid, region, region + 0x100000));
    CHECK(leftovers(g, after) == "");
}
