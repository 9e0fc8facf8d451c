// The narrow interface between the redirector and whatever drives the VM.
//
// Like Cloud Hypervisor's Debuggable trait, it is the only thing the injection engine
// knows about the hypervisor, in two halves: GuestRunControl (run control, vCPU registers
// in linux/kvm.h's vocabulary, memory through a vCPU's page tables, execution breakpoints)
// and GuestPhysicalAccess (guest-physical memory through the same link). GuestAccess is
// both; GdbstubAccess implements it over QEMU's gdbstub, tests with an in-memory fake.
// Code that needs only one half takes only that one (GuestRam's proof of the RAM mapping
// needs physical access, never run control).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/deadline.h"
#include "common/error.h"

namespace cloudvmi {

// vCPU numbers as the stub reports them (QEMU: cpu_index + 1).
using VcpuId = int;

struct VcpuState {
    kvm_regs regs{};              // rax..r15, rip, rflags
    kvm_sregs sregs{};            // segment selectors, fs/gs base, cr0/2/3/4/8, efer
    uint64_t kernel_gs_base = 0;  // MSR_KERNEL_GS_BASE, which kvm_sregs does not hold

    bool user_mode() const { return (sregs.cs.selector & 3) == 3; }
};

// An exact copy of a vCPU's whole register file, FPU/SSE state included, as the backend
// represents it. Restoring it puts the vCPU back bit for bit; the journal persists `raw`.
struct RegisterSnapshot {
    VcpuId vcpu = 0;
    std::vector<uint8_t> raw;
    VcpuState state;
};

struct StopEvent {
    VcpuId vcpu = 0;
    enum class Reason { kBreakpoint, kInterrupted, kOther } reason = Reason::kOther;
};

// What a session cost the VM: every stop pauses all vCPUs, and under TCG every stop and
// every breakpoint change also throws away QEMU's translated code.
struct RunControlCounters {
    uint64_t stops = 0;               // the VM stopped (breakpoint, interrupt, step, attach)
    uint64_t breakpoint_changes = 0;  // insertions and removals
    // How long the VM stood still for us: from each stop (as we learn of it) to its resume.
    double stopped_ms = 0;
};

// Guest-physical memory through the debug link (the VM stopped, or the link refuses).
class GuestPhysicalAccess {
  public:
    virtual ~GuestPhysicalAccess() = default;
    virtual ErrorOr<void> read_physical(uint64_t pa, std::span<uint8_t> out) = 0;
    virtual ErrorOr<void> write_physical(uint64_t pa, std::span<const uint8_t> data) = 0;
};

class GuestRunControl {
  public:
    virtual ~GuestRunControl() = default;

    // A short description for messages ("unix:/run/vm1.gdb").
    virtual std::string describe() const = 0;
    // The local process that runs the VM (QEMU), when known: its memory is the guest's RAM.
    virtual std::optional<int> hypervisor_pid() const { return std::nullopt; }

    // --- run control; the guest is stopped right after attach ---
    virtual bool running() const = 0;
    // Resumes every vCPU.
    virtual ErrorOr<void> resume() = 0;
    // Calls `note` once, just before the VM is next let run (a resume or a detach), so that
    // a record can say beforehand that the VM ran since we connected. Every link must: the
    // session clears its claim on the connection's pause only there.
    virtual void before_next_resume(std::function<void()> note) = 0;
    // Waits for the next stop after resume()/step().
    virtual ErrorOr<StopEvent> wait_for_stop(Deadline deadline) = 0;
    // Stops a running guest.
    virtual ErrorOr<StopEvent> interrupt(Deadline deadline) = 0;
    // While running: whether the VM was stopped by someone else (its owner paused it, an
    // I/O error, a panic). Then running() turns false and the VM must be left stopped.
    virtual ErrorOr<bool> stopped_by_others() { return false; }
    // After stopped_by_others(): the VM was seen running again (the mailbox answered).
    virtual void resumed_by_others() {}
    // Executes one instruction on one vCPU (the others stay stopped) and returns its stop.
    virtual ErrorOr<StopEvent> step(VcpuId vcpu, Deadline deadline) = 0;

    // --- vCPU state (guest stopped) ---
    virtual ErrorOr<std::vector<VcpuId>> vcpus() = 0;
    virtual ErrorOr<RegisterSnapshot> snapshot(VcpuId vcpu) = 0;
    virtual ErrorOr<void> restore(const RegisterSnapshot& snapshot) = 0;
    // Sets the general-purpose registers, rip and rflags; everything else is unchanged.
    virtual ErrorOr<void> write_regs(VcpuId vcpu, const kvm_regs& regs) = 0;

    // --- memory (guest stopped) ---
    // Through the vCPU's current page tables.
    virtual ErrorOr<void> read_virtual(VcpuId vcpu, uint64_t va, std::span<uint8_t> out) = 0;
    virtual ErrorOr<void> write_virtual(VcpuId vcpu, uint64_t va,
                                        std::span<const uint8_t> data) = 0;

    // --- execution breakpoints on a guest-virtual address, on every vCPU ---
    // A vCPU resumed on an armed breakpoint stops again at once: step over it first.
    virtual ErrorOr<void> insert_breakpoint(uint64_t va) = 0;
    virtual ErrorOr<void> remove_breakpoint(uint64_t va) = 0;

    // Removes every breakpoint, lets the guest run and ends the session.
    virtual ErrorOr<void> detach() = 0;
    // Ends the session without a word to the VM: it stays exactly as it is (paused by its
    // owner, or holding breakpoints that the guardian will remove).
    virtual void abandon() {}

    virtual RunControlCounters counters() const = 0;
};

class GuestAccess : public GuestRunControl, public GuestPhysicalAccess {};

}  // namespace cloudvmi
