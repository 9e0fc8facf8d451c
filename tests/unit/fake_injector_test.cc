// SyscallInjector against the fake guest.
#include <catch2/catch.hpp>
#include <climits>
#include <cstring>

#include "fake_guest.h"
#include "redirector/inject/kernel_discovery.h"
#include "redirector/inject/syscall_injector.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_test_helpers.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;
using namespace cloudvmi::x86abi;

namespace {

bool same_regs(const kvm_regs& a, const kvm_regs& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
}

// What sysretq makes of the registers a thread was caught with: the state the thread is
// given back in once it has run a syscall of ours.
kvm_regs after_sysret(const kvm_regs& at_sysret) {
    kvm_regs r = at_sysret;
    r.rip = at_sysret.rcx;
    r.rflags = (at_sysret.r11 & 0x3C7FD7) | 2;
    return r;
}

// The thread stands in user mode right after its own syscall, every register its own.
void check_given_back(FakeGuest& g, int64_t tid, const kvm_regs& original) {
    auto t = g.thread(tid);
    REQUIRE(t);
    CHECK(t->cpu.user_mode());
    CHECK(same_regs(t->cpu.regs, after_sysret(original)));
}

int64_t hijacked_tid(FakeGuest& g, const SyscallInjector& inj) {
    auto tid = g.thread_on_vcpu(inj.vcpu());
    REQUIRE(tid);
    return *tid;
}

uint64_t natural(FakeGuest& g, int64_t tid) {
    return g.thread(tid)->natural_syscalls;
}
uint64_t checked(FakeGuest& g, int64_t tid) {
    return g.thread(tid)->checked_returns;
}

Deadline attach_deadline() {
    return Deadline::after_ms(20000);
}

bool is_kernel_trap(const KernelEntryPoints& k, uint64_t a) {
    return a == k.sysret || a == k.slow_return || a == k.iret || a == k.syscall_entry;
}

// The held thread stands at its landing in user mode, with only that breakpoint armed.
void check_held_at_landing(FakeGuest& g, const SyscallInjector& inj) {
    int64_t tid = hijacked_tid(g, inj);
    auto t = g.thread(tid);
    CHECK(t->cpu.user_mode());
    CHECK(t->cpu.regs.rip == inj.landing());
    CHECK(t->cpu.regs.rsp == inj.original_regs().rsp);
    CHECK(g.armed_breakpoints() == std::vector<uint64_t>{inj.landing()});
}

}  // namespace

TEST_CASE("fake injector: hijacks a root thread, never the uid-1000 one, and gives it back intact",
          "[fake]") {
    // The root sleeper starts late: the uid-1000 worker is the first thread to come by.
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 150});
    auto k = discover_kernel_entry_points(g, 1);
    REQUIRE(k);
    RecoveryLog log;
    SyscallInjector inj(g, *k, log, attach_deadline());
    REQUIRE(inj.hijack());
    REQUIRE(inj.hijacked());
    CHECK_FALSE(g.running());

    int64_t tid = hijacked_tid(g, inj);
    auto t = g.thread(tid);
    CHECK(t->pid == kSleeperPid);
    CHECK(g.process(t->pid)->uid == 0);
    // The worker was looked at (asked its uid, once), rejected and let go; the sleeper was
    // vetted with queries only, prctl(PR_GET_SECCOMP) among them.
    CHECK(inj.stats().candidates_rejected >= 1);
    CHECK(inj.stats().rejected.find("uid 1000") != std::string::npos);
    CHECK(g.thread(kWorkerPid)->injected_by_nr.at(kGetuid) == 1);
    CHECK(only_vetted(g, kWorkerPid));
    CHECK_FALSE(injected_kinds(g, kWorkerPid).count(kPrctl));
    CHECK(only_vetted(g, tid));
    CHECK(injected_kinds(g, tid).count(kPrctl));
    const uint64_t vetting = t->injected_syscalls;

    // What the injector saved is exactly what the thread had at its own sysret.
    REQUIRE(t->last_natural_sysret);
    CHECK(same_regs(inj.original_regs(), *t->last_natural_sysret));
    CHECK(SyscallInjector::address_space(inj.cr3()) == g.process(t->pid)->cr3);
    CHECK(inj.landing() == inj.original_regs().rcx);
    CHECK(log.current().thread_phase == ThreadPhase::kHeld);
    CHECK(log.current().landing == inj.landing());
    CHECK(same_regs(log.current().thread_regs, inj.original_regs()));
    // Vetted by syscalls of ours: it now waits at its own return address in user mode.
    check_held_at_landing(g, inj);

    auto pid = inj.syscall(kGetpid, {});
    REQUIRE(pid);
    CHECK(*pid == static_cast<uint64_t>(kSleeperPid));
    CHECK(*inj.syscall(kGetuid, {}) == 0);
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    CHECK(*inj.syscall(kGetppid, {}) == static_cast<uint64_t>(kInitPid));
    CHECK(*inj.syscall(9999, {}) == static_cast<uint64_t>(-ENOSYS));
    CHECK(g.thread(tid)->injected_syscalls == vetting + 5);
    CHECK(inj.last_result() == static_cast<uint64_t>(-ENOSYS));
    check_held_at_landing(g, inj);
    // Memory of the hijacked process: its code page holds the syscall it returned from.
    std::vector<uint8_t> code(2);
    REQUIRE(inj.read_memory(inj.original_regs().rcx - 2, code));
    CHECK(code == std::vector<uint8_t>{0x0f, 0x05});

    REQUIRE(inj.release());
    CHECK_FALSE(inj.hijacked());
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    check_given_back(g, tid, inj.original_regs());
    CHECK(log.current().nothing_to_undo());

    // The guest goes on as if nothing happened: every thread's own syscalls still see
    // their registers preserved and their results right.
    uint64_t sleeper_before = checked(g, tid), worker_before = checked(g, kWorkerPid);
    run_free(g, 200);
    CHECK(checked(g, tid) > sleeper_before + 10);
    CHECK(checked(g, kWorkerPid) > worker_before + 10);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a thread running in the shadow band is never hijacked", "[fake]") {
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 300, .band_process = true});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    CHECK(g.thread(tid)->pid == kSleeperPid);
    CHECK(g.now() >= 300);
    // The band process made plenty of syscalls meanwhile, stopped at the trap and was let
    // pass without ever being borrowed, not even for getuid.
    CHECK(natural(g, kBandPid) > 10);
    CHECK(g.thread(kBandPid)->injected_syscalls == 0);
    CHECK(inj.stats().kernel_trap_stops > 10);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    run_free(g, 100);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a root thread under a seccomp filter is let go after prctl", "[fake]") {
    ProcessSpec sandboxed;
    sandboxed.pid = 500;
    sandboxed.comm = "sandboxed";
    sandboxed.seccomp = 2;
    sandboxed.loop = {Step::sleep(1)};
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 150, .worker = false, .extra = {sandboxed}});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    auto hj = inj.hijack();
    INFO((hj ? std::string() : hj.error().describe()));
    REQUIRE(hj);
    CHECK(g.thread(hijacked_tid(g, inj))->pid == kSleeperPid);
    // Asked its uid and its seccomp mode (queries its filter allows), nothing else.
    CHECK(only_vetted(g, 500));
    CHECK(injected_kinds(g, 500).count(kPrctl));
    CHECK(inj.stats().candidates_rejected >= 1);
    CHECK(inj.stats().rejected.find("seccomp mode 2") != std::string::npos);
    REQUIRE(inj.release());
    uint64_t c0 = checked(g, 500);
    run_free(g, 100);
    CHECK(checked(g, 500) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: pid 1 of a container is let go, not kept as the VM's init", "[fake]") {
    // Root, no seccomp, pid 1 in its own pid namespace and making syscalls all the time:
    // kept for last as if it were the VM's init, it would stop the VM at each of them
    // while other threads are waited for.
    ProcessSpec init_of_container;
    init_of_container.pid = 500;
    init_of_container.ns_pid = 1;
    init_of_container.comm = "container-init";
    init_of_container.mnt_ns = kContainerMntNs;
    init_of_container.pid_ns = kContainerPidNs;
    init_of_container.loop = {Step::call(kGetpid)};
    FakeGuest g(
        FakeOptions{.sleeper_delay_ms = 200, .worker = false, .extra = {init_of_container}});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    CHECK(g.thread(hijacked_tid(g, inj))->pid == kSleeperPid);
    INFO(inj.stats().rejected);
    CHECK(inj.stats().rejected.find("pid 1: init of another pid namespace") != std::string::npos);
    CHECK(inj.stats().rejected.find("init, borrowed only if") == std::string::npos);
    CHECK(injected_kinds(g, 500).count(kGetsid));
    REQUIRE(inj.release());
    run_free(g, 50);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: the VM's init is kept for last, after a look at pid 2", "[fake]") {
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 200, .worker = false, .busy_init = true});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    CHECK(g.thread(hijacked_tid(g, inj))->pid == kSleeperPid);
    CHECK(inj.stats().rejected == "pid 1: init, borrowed only if no other process comes by");
    REQUIRE(inj.release());
    run_free(g, 50);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a busy thread that is never borrowed stops the VM only now and then",
          "[fake]") {
    // The uid-1000 worker returns from a syscall every tick or two; the sleeper, the only
    // usable thread, starts after a second.
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 1000});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    CHECK(g.thread(hijacked_tid(g, inj))->pid == kSleeperPid);
    CHECK(g.now() >= 1000);
    CHECK(natural(g, kWorkerPid) > 150);
    INFO("worker syscalls " << natural(g, kWorkerPid) << ", trap rests "
                            << inj.stats().kernel_trap_rests);
    CHECK(inj.stats().kernel_trap_stops < 60);  // 200 and more without rests
    CHECK(inj.stats().kernel_trap_rests > 5);
    CHECK(g.stats().stops < 120);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    run_free(g, 50);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: other processes at the landing address are stepped over and keep running",
          "[fake]") {
    // Every workload has its code at the same address: they all pass our landing.
    FakeGuest g(FakeOptions{.vcpus = 2, .container = true});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    int64_t pid = g.thread(tid)->pid;
    kvm_regs original = inj.original_regs();

    // A scratch page in the hijacked process, for a timespec.
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    REQUIRE_FALSE(is_error_result(page));
    REQUIRE(g.has_mapping_in(pid, page, page + 4096));
    Timespec ts{0, 60'000'000};
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));

    std::map<int64_t, uint64_t> before;
    for (const auto& p : g.processes())
        before[p.pid] = natural(g, p.tids.at(0));
    uint64_t t0 = g.now();
    int foreign0 = inj.stats().foreign_stops;
    auto slept = inj.syscall(kNanosleep, {page, 0});
    REQUIRE(slept);
    CHECK(*slept == 0);
    CHECK(g.now() - t0 >= 60);
    CHECK(inj.stats().foreign_stops > foreign0 + 20);
    // Everyone else made progress while our thread slept.
    for (const auto& p : g.processes()) {
        if (p.pid == pid || p.pid == kInitPid) continue;
        INFO("pid " << p.pid);
        CHECK(natural(g, p.tids.at(0)) > before[p.pid] + 10);
        CHECK(only_vetted(g, p.tids.at(0)));
    }
    check_held_at_landing(g, inj);

    CHECK(*inj.syscall(kMunmap, {page, 4096}) == 0);
    CHECK_FALSE(g.has_mapping_in(pid, page, page + 4096));
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    check_given_back(g, tid, original);
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: other threads of the borrowed process at the landing are stepped over",
          "[fake]") {
    // Three threads run the same program from the same code: each comes back from its own
    // syscalls to our landing address, in our address space, on its own stack.
    ProcessSpec multi;
    multi.pid = 500;
    multi.comm = "threaded";
    multi.threads = 3;
    multi.loop = {Step::call(kGetpid, {}, 1), Step::call(kGetuid, {}, 1)};
    // Under TCG a single step executes the instruction under a breakpoint; a hardware
    // breakpoint would stop the step at once: stepping over must remove ours either way.
    bool tcg = GENERATE(true, false);
    INFO("single step overrides breakpoints: " << tcg);
    FakeGuest g(FakeOptions{.vcpus = 2,
                            .sleeper = false,
                            .worker = false,
                            .extra = {multi},
                            .step_overrides_breakpoints = tcg});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    REQUIRE(g.thread(tid)->pid == 500);
    kvm_regs original = inj.original_regs();
    auto tids = g.process(500)->tids;
    REQUIRE(tids.size() == 3);
    std::map<int64_t, uint64_t> before;
    for (int64_t t : tids)
        before[t] = checked(g, t);

    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    REQUIRE_FALSE(is_error_result(page));
    Timespec ts{0, 50'000'000};
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
    int foreign0 = inj.stats().foreign_stops;
    REQUIRE(*inj.syscall(kNanosleep, {page, 0}) == 0);
    CHECK(inj.stats().foreign_stops > foreign0 + 20);
    for (int64_t t : tids) {
        if (t == tid) continue;
        INFO("sibling " << t);
        CHECK(checked(g, t) > before[t] + 10);
        CHECK(g.thread(t)->injected_syscalls == 0);
    }
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    check_held_at_landing(g, inj);
    REQUIRE(inj.release());
    check_given_back(g, tid, original);
    for (int64_t t : tids)
        before[t] = checked(g, t);
    run_free(g, 100);
    for (int64_t t : tids)
        CHECK(checked(g, t) > before[t] + 5);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE(
    "fake injector: a signal handler run during an injected syscall comes back to the landing",
    "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    int64_t pid = g.thread(tid)->pid;
    kvm_regs o = inj.original_regs();
    REQUIRE(*inj.syscall(kGetpid, {}) == static_cast<uint64_t>(pid));

    // The kernel delivers the signal on the way out of our getpid: the process's own
    // handler runs, returns through rt_sigreturn, and the thread comes back to the
    // landing with getpid's result.
    g.signal_on_next_return(tid);
    auto r = inj.syscall(kGetpid, {});
    REQUIRE(r);
    CHECK(*r == static_cast<uint64_t>(pid));
    CHECK(inj.hijacked());
    auto t = g.thread(tid);
    CHECK(t->signals_delivered == 1);
    CHECK(t->handler_runs == 1);
    REQUIRE(t->sigreturns == 1);
    // rt_sigreturn put back what the kernel saved: our registers, bound for the landing.
    REQUIRE(t->last_sigreturn);
    CHECK(t->last_sigreturn->rip == inj.landing());
    CHECK(t->last_sigreturn->rsp == o.rsp);
    CHECK(t->last_sigreturn->rax == static_cast<uint64_t>(pid));
    check_held_at_landing(g, inj);
    CHECK(log.current().thread_phase == ThreadPhase::kHeld);

    // A signal that interrupts a blocking syscall of ours: the handler runs and the
    // syscall's -EINTR comes back to the landing.
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    REQUIRE_FALSE(is_error_result(page));
    Timespec ts{5, 0};
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
    uint64_t t0 = g.now();
    g.signal_on_next_return(tid, 12);
    auto slept = inj.syscall(kNanosleep, {page, 0});
    REQUIRE(slept);
    CHECK(*slept == static_cast<uint64_t>(-EINTR));
    CHECK(g.now() - t0 < 1000);
    t = g.thread(tid);
    CHECK(t->handler_runs == 2);
    CHECK(t->sigreturns == 2);
    REQUIRE(*inj.syscall(kMunmap, {page, 4096}) == 0);
    check_held_at_landing(g, inj);

    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    CHECK(log.current().nothing_to_undo());
    check_given_back(g, tid, o);
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a signal during the candidate checks does not stop hijack()", "[fake]") {
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    // The sleeper's next injected syscall is the first query of hijack(): a signal is
    // delivered on its way out.
    g.signal_on_next_return(kSleeperPid, 10, true);
    REQUIRE(inj.hijack());
    CHECK(hijacked_tid(g, inj) == kSleeperPid);
    auto t = g.thread(kSleeperPid);
    CHECK(t->signals_delivered == 1);
    CHECK(t->handler_runs == 1);
    CHECK(t->sigreturns == 1);
    check_held_at_landing(g, inj);
    kvm_regs o = inj.original_regs();
    CHECK(*inj.syscall(kGetuid, {}) == 0);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    check_given_back(g, kSleeperPid, o);
    uint64_t c0 = checked(g, kSleeperPid);
    run_free(g, 100);
    CHECK(checked(g, kSleeperPid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: restarted syscalls and returns through iretq come back to the landing",
          "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 2, .worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    // The first syscall, entered at entry_SYSCALL_64 from sysretq, is restarted: the kernel
    // sends the thread to the `syscall` before its landing, which runs it again.
    g.restart_next_syscall(kSleeperPid, true);
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    REQUIRE(tid == kSleeperPid);
    CHECK(g.thread(tid)->restarts == 1);
    kvm_regs o = inj.original_regs();

    // A later one, made from user mode, is restarted too.
    g.restart_next_syscall(tid, true);
    auto r = inj.syscall(kGetpid, {});
    REQUIRE(r);
    CHECK(*r == static_cast<uint64_t>(kSleeperPid));
    CHECK(g.thread(tid)->restarts == 2);
    check_held_at_landing(g, inj);

    // Our syscall returns through the slow path (iretq) without a signal: it still lands.
    g.slow_return_next_syscall(tid, true);
    r = inj.syscall(kGetuid, {});
    REQUIRE(r);
    CHECK(*r == 0);
    CHECK(g.thread(tid)->slow_returns == 1);
    check_held_at_landing(g, inj);
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    check_given_back(g, tid, o);
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: the borrowed thread may come back on another vCPU", "[fake]") {
    // Busy workloads on both vCPUs: a thread woken from a sleep of ours goes wherever a
    // vCPU is free first.
    ProcessSpec busy;
    busy.pid = 500;
    busy.comm = "busy";
    busy.uid = 1000;
    busy.loop = {Step::call(kGetpid, {}, 2)};
    FakeGuest g(FakeOptions{.vcpus = 2, .extra = {busy}});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    kvm_regs o = inj.original_regs();
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    REQUIRE_FALSE(is_error_result(page));
    std::set<VcpuId> seen = {inj.vcpu()};
    for (int i = 0; i < 40 && seen.size() < 2; ++i) {
        Timespec ts{0, 3'000'000 + i * 1'000'000};
        REQUIRE(
            inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
        REQUIRE(*inj.syscall(kNanosleep, {page, 0}) == 0);
        CHECK(g.thread_on_vcpu(inj.vcpu()) == tid);
        CHECK(log.current().thread_vcpu == inj.vcpu());
        seen.insert(inj.vcpu());
    }
    REQUIRE(seen.size() == 2);
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    REQUIRE(*inj.syscall(kMunmap, {page, 4096}) == 0);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    check_given_back(g, tid, o);
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: the kernel-wide trap is armed only while looking for a thread",
          "[fake]") {
    // The uid-1000 worker comes first and is rejected; then the sleeper is held.
    FakeGuest g(FakeOptions{.vcpus = 2, .sleeper_delay_ms = 100});
    auto k = fixture_entry_points();
    RecoveryLog log;
    FailingGuest conn(g, LONG_MAX);
    int resumes_hunting = 0, resumes_held = 0, writes = 0;
    std::vector<std::string> bad;
    conn.before_call([&](const char* what) {
        bool kernel_armed = false;
        for (uint64_t a : g.armed_breakpoints())
            kernel_armed = kernel_armed || is_kernel_trap(k, a);
        bool held = log.current().thread_phase != ThreadPhase::kNone;
        if (std::strcmp(what, "resume") == 0) {
            if (held) ++resumes_held;
            if (!held && kernel_armed) ++resumes_hunting;
            if (held && kernel_armed) bad.push_back("resume with a thread held");
        }
        if (std::strcmp(what, "write_regs") == 0) {
            ++writes;
            if (kernel_armed) bad.push_back("write_regs");
        }
        if (std::strcmp(what, "step") == 0 && held && kernel_armed) bad.push_back("step");
    });
    SyscallInjector inj(conn, k, log, attach_deadline());
    REQUIRE(inj.hijack());
    CHECK(inj.stats().candidates_rejected >= 1);
    CHECK(inj.stats().kernel_trap_stops >= 2);
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    Timespec ts{0, 30'000'000};
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
    REQUIRE(*inj.syscall(kNanosleep, {page, 0}) == 0);
    REQUIRE(*inj.syscall(kMunmap, {page, 4096}) == 0);
    REQUIRE(inj.release());
    CHECK(resumes_hunting >= 2);  // once per candidate
    CHECK(resumes_held >= 5);
    CHECK(writes >= 6);
    CHECK(bad.empty());
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: hijack times out on a guest where no root thread makes syscalls",
          "[fake]") {
    FakeGuest g(FakeOptions{.sleeper = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, Deadline::after_ms(500));
    auto r = inj.hijack();
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ETIMEDOUT);
    CHECK_FALSE(inj.hijacked());
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    // Tried once, remembered as non-root.
    CHECK(g.thread(kWorkerPid)->injected_by_nr.at(kGetuid) == 1);
    CHECK(only_vetted(g, kWorkerPid));
    CHECK(inj.stats().candidates_rejected >= 1);
    CHECK(inj.stats().kernel_trap_stops > 1);
    CHECK(log.current().nothing_to_undo());
    run_free(g, 50);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a borrowed thread killed during an injected syscall ends the wait",
          "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 2});
    FailingGuest conn(g, LONG_MAX);
    auto k = fixture_entry_points();
    RecoveryLog log;
    // Far longer than the check's slice: only the check can end the wait early.
    SyscallInjector inj(conn, k, log, Deadline::after_ms(60000));
    REQUIRE(inj.hijack());
    int64_t pid = inj.pid();
    REQUIRE(pid != kInitPid);
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    REQUIRE_FALSE(is_error_result(page));
    Timespec ts{50, 0};
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
    bool killed = false;
    conn.before_call([&](const char* op) {
        if (!killed && std::string_view(op) == "wait_for_stop") killed = g.kill_process(pid);
    });
    auto before = Clock::now();
    auto r = inj.syscall(kNanosleep, {page, 0});
    REQUIRE(killed);
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ESRCH);
    CHECK_FALSE(inj.hijacked());
    // Found out after a slice or so, not at the deadline.
    CHECK(elapsed_ms(before) < 3 * SyscallInjector::kLivenessSlice.count());
    CHECK(log.current().thread_phase == ThreadPhase::kNone);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    run_free(g, 100);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: a long injected syscall of a live thread is waited for", "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 1});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log, Deadline::after_ms(60000));
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    kvm_regs o = inj.original_regs();
    uint64_t page =
        *inj.syscall(kMmap, {0, 4096, kProtRead | kProtWrite,
                             kMapPrivate | kMapAnonymous | kMapPopulate, ~uint64_t{0}, 0});
    Timespec ts{5, 0};  // two and a half slices
    REQUIRE(inj.write_memory(page, std::span(reinterpret_cast<const uint8_t*>(&ts), sizeof ts)));
    CHECK(*inj.syscall(kNanosleep, {page, 0}) == 0);
    CHECK(inj.hijacked());
    REQUIRE(*inj.syscall(kMunmap, {page, 4096}) == 0);
    REQUIRE(inj.release());
    check_given_back(g, tid, o);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}
