// SyscallInjector against the fake guest.
#include <catch2/catch.hpp>
#include <cstring>

#include "fake_guest.h"
#include "redirector/kernel_discovery.h"
#include "redirector/recovery_log.h"
#include "redirector/syscall_injector.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/fake_test_helpers.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;
using namespace cloudvmi::x86abi;

namespace {

bool same_regs(const kvm_regs& a, const kvm_regs& b) {
    return std::memcmp(&a, &b, sizeof a) == 0;
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

}  // namespace

TEST_CASE("fake injector: hijacks a root thread, never the uid-1000 one, and gives it back intact",
          "[fake]") {
    // The root sleeper starts late: the uid-1000 worker is the first thread to come by.
    FakeGuest g(FakeOptions{.sleeper_delay_ms = 150});
    auto k = discover_kernel_entry_points(g, 1);
    REQUIRE(k);
    RecoveryLog log;
    SyscallInjector inj(g, *k, log);
    REQUIRE(inj.hijack());
    REQUIRE(inj.hijacked());
    CHECK_FALSE(g.running());

    int64_t tid = hijacked_tid(g, inj);
    auto t = g.thread(tid);
    CHECK(t->pid == kSleeperPid);
    CHECK(g.process(t->pid)->uid == 0);
    // The worker was looked at (one getuid injected), rejected and let go.
    CHECK(inj.stats().candidates_rejected >= 1);
    CHECK(g.thread(kWorkerPid)->injected_syscalls == 1);
    CHECK(g.thread(kWorkerPid)->cpu.regs.rbx != 0);

    // What the injector saved is exactly what the thread had at its own sysret.
    REQUIRE(t->last_natural_sysret);
    CHECK(same_regs(inj.original_regs(), *t->last_natural_sysret));
    CHECK(SyscallInjector::address_space(inj.cr3()) == g.process(t->pid)->cr3);
    CHECK(log.current().thread_phase == ThreadPhase::kHeld);
    CHECK(same_regs(log.current().thread_regs, inj.original_regs()));

    auto pid = inj.syscall(kGetpid, {});
    REQUIRE(pid);
    CHECK(*pid == static_cast<uint64_t>(kSleeperPid));
    CHECK(*inj.syscall(kGetuid, {}) == 0);
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    CHECK(*inj.syscall(kGetppid, {}) == static_cast<uint64_t>(kInitPid));
    CHECK(*inj.syscall(9999, {}) == static_cast<uint64_t>(-ENOSYS));
    CHECK(g.thread(tid)->injected_syscalls == 6);  // getuid of hijack() + 5
    // Memory of the hijacked process: its code page holds the syscall it returned from.
    std::vector<uint8_t> code(2);
    REQUIRE(inj.read_memory(inj.original_regs().rcx - 2, code));
    CHECK(code == std::vector<uint8_t>{0x0f, 0x05});

    REQUIRE(inj.release());
    CHECK_FALSE(inj.hijacked());
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    auto after = g.snapshot(inj.vcpu());
    REQUIRE(after);
    CHECK(same_regs(after->state.regs, inj.original_regs()));
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
    SyscallInjector inj(g, k, log);
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    CHECK(g.thread(tid)->pid == kSleeperPid);
    CHECK(g.now() >= 300);
    // The band process made plenty of syscalls meanwhile, was seen and rejected without
    // ever being borrowed, not even for getuid.
    CHECK(natural(g, kBandPid) > 10);
    CHECK(g.thread(kBandPid)->injected_syscalls == 0);
    CHECK(inj.stats().candidates_rejected > 10);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    run_free(g, 100);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: other threads returning meanwhile are stepped over and keep running",
          "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 2, .container = true});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log);
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
    }
    // Only our breakpoints, and our thread is still the held one.
    CHECK(g.thread(tid)->cpu.regs.rip == k.sysret);

    CHECK(*inj.syscall(kMunmap, {page, 4096}) == 0);
    CHECK_FALSE(g.has_mapping_in(pid, page, page + 4096));
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    CHECK(same_regs(g.thread(tid)->cpu.regs, original));
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE(
    "fake injector: a signal during an injected syscall is repaired and the thread given back",
    "[fake]") {
    FakeGuest g;
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log);
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    int64_t pid = g.thread(tid)->pid;
    kvm_regs o = inj.original_regs();
    REQUIRE(*inj.syscall(kGetpid, {}) == static_cast<uint64_t>(pid));

    g.signal_on_next_return(tid);
    auto r = inj.syscall(kGetpid, {});
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == EINTR);
    CHECK_FALSE(inj.hijacked());
    CHECK(inj.stats().signals_repaired == 1);
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    CHECK(log.current().nothing_to_undo());
    REQUIRE(g.thread(tid)->signals_delivered == 1);

    // The frame the handler will return through holds the thread's own registers.
    uint64_t frame = g.thread(tid)->last_signal_frame;
    auto bytes = g.read_process(pid, frame + kSigframeMcontextOffset, 8 * kScRegCount);
    REQUIRE(bytes);
    uint64_t sc[kScRegCount];
    std::memcpy(sc, bytes->data(), sizeof sc);
    CHECK(sc[kScRip] == o.rcx);
    CHECK(sc[kScRax] == o.rax);
    CHECK(sc[kScRbx] == o.rbx);
    CHECK(sc[kScRcx] == o.rcx);
    CHECK(sc[kScRsp] == o.rsp);
    CHECK(sc[kScEflags] == o.r11);
    CHECK(sc[kScR11] == o.r11);
    CHECK(sc[kScRdi] == o.rdi);
    CHECK(sc[kScRsi] == o.rsi);
    CHECK(sc[kScRdx] == o.rdx);
    CHECK(sc[kScRbp] == o.rbp);
    CHECK(sc[kScR8] == o.r8);
    CHECK(sc[kScR9] == o.r9);
    CHECK(sc[kScR10] == o.r10);
    CHECK(sc[kScR12] == o.r12);
    CHECK(sc[kScR13] == o.r13);
    CHECK(sc[kScR14] == o.r14);
    CHECK(sc[kScR15] == o.r15);

    // Released: the handler runs, returns through rt_sigreturn, and the thread is back in
    // user mode exactly where and as it was before it was hijacked.
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    auto t = g.thread(tid);
    CHECK(t->handler_runs == 1);
    REQUIRE(t->sigreturns == 1);
    const kvm_regs& u = *t->last_sigreturn;
    CHECK(u.rip == o.rcx);
    CHECK(u.rflags == o.r11);
    kvm_regs expect = o;
    expect.rip = u.rip;
    expect.rflags = u.rflags;
    CHECK(same_regs(u, expect));
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());

    // The injector can hijack again afterwards.
    REQUIRE(inj.hijack());
    CHECK(*inj.syscall(kGetuid, {}) == 0);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
}

TEST_CASE("fake injector: a signal that hits the uid check is repaired and hijack() goes on",
          "[fake]") {
    FakeGuest g(FakeOptions{.worker = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log);
    // The sleeper's next return delivers a signal: that is the getuid of hijack().
    g.signal_on_next_return(kSleeperPid, 10, true);
    REQUIRE(inj.hijack());
    CHECK(inj.stats().signals_repaired == 1);
    CHECK(g.thread(kSleeperPid)->signals_delivered == 1);
    CHECK(*inj.syscall(kGetuid, {}) == 0);
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    run_free(g, 100);
    CHECK(g.thread(kSleeperPid)->sigreturns == 1);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: restarted syscalls and slow returns through iretq", "[fake]") {
    FakeGuest g(FakeOptions{.vcpus = 2});
    auto k = fixture_entry_points();
    RecoveryLog log;
    SyscallInjector inj(g, k, log);
    REQUIRE(inj.hijack());
    int64_t tid = hijacked_tid(g, inj);
    int64_t pid = g.thread(tid)->pid;
    kvm_regs o = inj.original_regs();

    // The kernel sends the thread back to its syscall instruction (rip = return - 2); it
    // executes it again and comes back through sysretq.
    g.restart_next_syscall(tid);
    auto r = inj.syscall(kGetpid, {});
    REQUIRE(r);
    CHECK(*r == static_cast<uint64_t>(pid));
    CHECK(g.thread(tid)->restarts == 1);

    // Our syscall returns through the slow path without a signal: that is an arrival too.
    g.slow_return_next_syscall(tid);
    r = inj.syscall(kGetuid, {});
    REQUIRE(r);
    CHECK(*r == 0);
    CHECK(inj.stats().slow_returns == 1);
    CHECK(g.thread(tid)->slow_returns == 1);
    CHECK(g.thread(tid)->cpu.regs.rip == k.iret);
    // From the iret landing, the next syscall and the release work the same.
    CHECK(*inj.syscall(kGetpid, {}) == static_cast<uint64_t>(pid));
    g.slow_return_next_syscall(tid);
    CHECK(*inj.syscall(kGettid, {}) == static_cast<uint64_t>(tid));
    REQUIRE(inj.release());
    CHECK(g.armed_breakpoints().empty());
    kvm_regs now = g.thread(tid)->cpu.regs;
    CHECK(now.rip == k.sysret);
    CHECK(same_regs(now, o));
    uint64_t c0 = checked(g, tid);
    run_free(g, 100);
    CHECK(checked(g, tid) > c0);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}

TEST_CASE("fake injector: hijack times out on a guest where no root thread makes syscalls",
          "[fake]") {
    FakeGuest g(FakeOptions{.sleeper = false});
    auto k = fixture_entry_points();
    RecoveryLog log;
    InjectorOptions opts;
    opts.hijack_timeout = Millis(500);
    SyscallInjector inj(g, k, log, opts);
    auto r = inj.hijack();
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ETIMEDOUT);
    CHECK_FALSE(inj.hijacked());
    CHECK(g.armed_breakpoints().empty());
    CHECK_FALSE(g.running());
    CHECK(g.thread(kWorkerPid)->injected_syscalls == 1);  // tried once, remembered as non-root
    CHECK(inj.stats().candidates_rejected > 1);
    run_free(g, 50);
    INFO(g.anomalies_text());
    CHECK(g.anomalies().empty());
}
