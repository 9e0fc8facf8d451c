// Kernel discovery and the basic gdbstub behaviour of the fake guest.
#include <catch2/catch.hpp>

#include "fake_guest.h"
#include "redirector/inject/kernel_discovery.h"
#include "redirector/inject/syscall_injector.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;
using namespace cloudvmi::fake;

TEST_CASE("fake: discover_kernel_entry_points finds the recorded kernel's entry points", "[fake]") {
    FakeGuest guest(FakeOptions{.vcpus = 2});
    auto want = fixture_entry_points();
    REQUIRE(want.syscall_entry == 0xffffffffae800080ULL);
    REQUIRE(want.sysret == 0xffffffffae800227ULL);
    REQUIRE(want.slow_return == 0xffffffffae801150ULL);
    REQUIRE(want.iret == 0xffffffffae801220ULL);
    for (VcpuId v : {1, 2}) {
        auto kep = discover_kernel_entry_points(guest, v);
        REQUIRE(kep);
        CHECK(kep->syscall_entry == want.syscall_entry);
        CHECK(kep->sysret == want.sysret);
        CHECK(kep->slow_return == want.slow_return);
        CHECK(kep->iret == want.iret);
        CHECK(kep->idt_base == kLinuxIdtAddress);
        CHECK(kep->pti);
    }
    CHECK_FALSE(guest.running());
    CHECK(guest.armed_breakpoints().empty());
    CHECK(guest.anomalies().empty());
}

TEST_CASE("fake: gdbstub semantics of run control and breakpoints", "[fake]") {
    FakeGuest guest;
    auto k = fixture_entry_points();

    // Packets are refused while the VM runs; waiting or interrupting a stopped VM is a bug.
    CHECK(guest.wait_for_stop(Deadline::after_ms(10)).error().code() == EINVAL);
    CHECK(guest.interrupt(Deadline::after_ms(10)).error().code() == EINVAL);
    REQUIRE(guest.resume());
    CHECK(guest.resume().error().code() == EBUSY);
    CHECK(guest.snapshot(1).error().code() == EBUSY);
    CHECK(guest.insert_breakpoint(k.sysret).error().code() == EBUSY);
    auto ev = guest.interrupt(Deadline::after_ms(10));
    REQUIRE(ev);
    CHECK(ev->reason == StopEvent::Reason::kInterrupted);
    CHECK_FALSE(guest.running());

    // Removing a breakpoint that is not set fails like QEMU's E22.
    CHECK(guest.remove_breakpoint(k.sysret).error().code() == EINVAL);

    // A syscall return stops at sysretq with the user context in the registers.
    REQUIRE(guest.insert_breakpoint(k.sysret));
    REQUIRE(guest.resume());
    uint64_t before = guest.now();
    ev = guest.wait_for_stop(Deadline::after_ms(1000));
    REQUIRE(ev);
    CHECK(ev->reason == StopEvent::Reason::kBreakpoint);
    CHECK(guest.now() - before < 100);
    auto snap = guest.snapshot(ev->vcpu);
    REQUIRE(snap);
    const auto& r = snap->state.regs;
    CHECK(r.rip == k.sysret);
    CHECK(snap->state.sregs.cs.selector == 0x10);
    CHECK_FALSE(snap->state.user_mode());
    CHECK(r.rcx > 0);
    CHECK(r.rcx < 0x7ffffffff000ULL);
    CHECK(r.rsp < 0x7ffffffff000ULL);
    CHECK(r.r11 == 0x246);
    // PTI: the user CR3 carries PCID bits and the user page-table bit.
    CHECK((snap->state.sregs.cr3 & 0x1fff) != 0);

    // Resumed on the armed breakpoint, the vCPU stops again without moving.
    uint64_t at_stop = guest.now();
    REQUIRE(guest.resume());
    auto again = guest.wait_for_stop(Deadline::after_ms(1000));
    REQUIRE(again);
    CHECK(again->vcpu == ev->vcpu);
    CHECK(guest.snapshot(ev->vcpu)->state.regs.rip == k.sysret);
    CHECK(guest.now() == at_stop);

    // Stepped with the breakpoint lifted, the thread returns to user mode at rcx.
    REQUIRE(guest.remove_breakpoint(k.sysret));
    auto stepped = guest.step(ev->vcpu, Deadline::after_ms(100));
    REQUIRE(stepped);
    auto user = guest.snapshot(ev->vcpu);
    REQUIRE(user);
    CHECK(user->state.user_mode());
    CHECK(user->state.regs.rip == r.rcx);
    CHECK(user->state.sregs.cs.selector == 0x33);
    CHECK(SyscallInjector::address_space(user->state.sregs.cr3) ==
          SyscallInjector::address_space(snap->state.sregs.cr3));

    // TCG: a single step executes the instruction even on an armed breakpoint.
    REQUIRE(guest.insert_breakpoint(r.rcx));
    REQUIRE(guest.step(ev->vcpu, Deadline::after_ms(100)));
    CHECK(guest.snapshot(ev->vcpu)->state.regs.rip != r.rcx);
    REQUIRE(guest.remove_breakpoint(r.rcx));

    // Counted like TCG: two inserts need two removals.
    REQUIRE(guest.insert_breakpoint(0x1000));
    REQUIRE(guest.insert_breakpoint(0x1000));
    REQUIRE(guest.remove_breakpoint(0x1000));
    CHECK(guest.armed_breakpoints() == std::vector<uint64_t>{0x1000});
    REQUIRE(guest.remove_breakpoint(0x1000));
    CHECK(guest.armed_breakpoints().empty());

    // With nothing armed, a deadline turns into ETIMEDOUT after its simulated time.
    REQUIRE(guest.resume());
    uint64_t t0 = guest.now();
    auto none = guest.wait_for_stop(Deadline::after_ms(200));
    REQUIRE_FALSE(none);
    CHECK(none.error().code() == ETIMEDOUT);
    CHECK(guest.now() - t0 >= 199);
    CHECK(guest.now() - t0 <= 201);
    CHECK(guest.running());
    REQUIRE(guest.interrupt(Deadline::after_ms(10)));

    // Memory: kernel text is readable from any vCPU; user memory through the current
    // process; unmapped addresses fail with EFAULT.
    std::vector<uint8_t> b(3);
    REQUIRE(guest.read_virtual(1, k.sysret, b));
    CHECK(b == std::vector<uint8_t>{0x48, 0x0f, 0x07});
    CHECK(guest.read_virtual(1, 0xffffffff00000000ULL, b).error().code() == EFAULT);
    CHECK(guest.read_virtual(1, 0x1000, b).error().code() == EFAULT);
    CHECK(guest.read_physical(0x1000, b).error().code() == EFAULT);

    CHECK(guest.anomalies().empty());
}
