// Runs syscalls inside a guest thread that the guest itself was running.
//
// A breakpoint on the kernel's return-to-user sysretq catches a thread whose registers
// already hold its user values. Pointing rip at entry_SYSCALL_64 with rax = nr and the
// arguments in rdi, rsi, rdx, r10, r8, r9 is exactly what a `syscall` at the user rcx
// would have done, so the kernel executes our syscall in that thread's context and comes
// back to the same sysretq. The thread carries a random cookie in rbx meanwhile, which
// tells it apart from every other thread stopping there.
//
// A signal may arrive while we borrow the thread. The kernel then returns through the slow
// path (iretq) into a handler with our registers saved in the signal frame; the injector
// catches that too and rewrites the frame with the thread's own registers, so the handler
// returns the thread to where it was. Either way the thread is always given back.
//
// Used only to bootstrap the shadow process (shadow_process.h); everything else runs there.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/breakpoint_set.h"
#include "redirector/guest_access.h"
#include "redirector/kernel_discovery.h"
#include "redirector/recovery_log.h"

namespace cloudvmi {

struct InjectorOptions {
    Millis hijack_timeout{30000};   // waiting for a suitable thread to return to user mode
    Millis syscall_timeout{10000};  // one injected syscall
};

struct InjectorStats {
    int candidates_seen = 0;  // threads stopped at the trap while looking for one
    int candidates_rejected = 0;
    int foreign_stops = 0;  // other threads that hit the trap while ours was busy
    int slow_returns = 0;   // our syscall came back through iretq
    int signals_repaired = 0;
    double hijack_ms = 0;
};

class SyscallInjector {
  public:
    SyscallInjector(GuestAccess& guest, const KernelEntryPoints& kernel, RecoveryLog& log,
                    InjectorOptions options = {});
    ~SyscallInjector();
    SyscallInjector(const SyscallInjector&) = delete;
    SyscallInjector& operator=(const SyscallInjector&) = delete;

    // With the guest stopped: arms the trap, lets the guest run, and keeps the first thread
    // that returns to user mode, runs as root (getuid() == 0) and whose address space is
    // not in `skip_cr3s`. Returns with that thread held and the guest stopped.
    ErrorOr<void> hijack(const std::set<uint64_t>& skip_cr3s = {});
    bool hijacked() const { return phase_ != Phase::kIdle; }

    // Runs one syscall in the held thread and returns raw rax (-4095..-1 is -errno).
    // `return_rip` replaces the user address the syscall returns to (used for clone).
    // If a signal interrupts the thread, it is repaired and released, and this returns
    // EINTR: hijack again to go on.
    ErrorOr<uint64_t> syscall(uint64_t nr, std::initializer_list<uint64_t> args,
                              std::optional<uint64_t> return_rip = std::nullopt);

    // Memory of the hijacked process (its thread is current on vcpu()).
    ErrorOr<void> read_memory(uint64_t va, std::span<uint8_t> out);
    ErrorOr<void> write_memory(uint64_t va, std::span<const uint8_t> data);

    // Gives the thread back exactly as it was and disarms the traps; the guest stays
    // stopped. Safe to call in any phase: a syscall still in flight is waited for.
    ErrorOr<void> release();

    // Takes charge of a thread a dead process left hijacked (from its recovery record). The
    // guest must be stopped with no breakpoints set. Afterwards the thread is either held
    // (hijacked() and syscalls possible) or still inside our syscall: finish() waits for it.
    ErrorOr<void> adopt(const RecoveryRecord& record);
    bool in_flight() const { return phase_ == Phase::kInFlight; }
    // Waits for a syscall left in flight to come back; the thread is then held, or, if a
    // signal reached it, repaired and released (hijacked() is false).
    ErrorOr<void> finish(Deadline deadline);
    // rax of the last syscall that came back (also one finished by finish()).
    uint64_t last_result() const { return last_result_; }

    VcpuId vcpu() const { return vcpu_; }
    uint64_t cr3() const { return cr3_; }
    const kvm_regs& original_regs() const { return original_; }
    const InjectorStats& stats() const { return stats_; }

    // Address-space identity of a CR3 value: drops the PCID bits, the PTI user/kernel bit
    // and the no-flush bit.
    static uint64_t address_space(uint64_t cr3) { return cr3 & 0x000fffffffffe000ULL; }

    // User addresses where shadow regions are placed; a thread executing there is a
    // shadow (ours or another host's), never a candidate for hijacking.
    static constexpr uint64_t kShadowBandStart = 0x7e0000000000ULL;
    static constexpr uint64_t kShadowBandEnd = 0x7f0000000000ULL;

  private:
    enum class Phase { kIdle, kHeld, kInFlight };
    enum class Landing { kSysret, kIret };

    struct Arrival {
        bool ours = false;
        VcpuId vcpu = 0;
        kvm_regs regs{};
        Landing landing = Landing::kSysret;
    };

    ErrorOr<void> step_over(VcpuId vcpu, uint64_t addr);
    // Resumes and waits until our thread is back at a return instruction.
    ErrorOr<Arrival> run_until_return(Deadline deadline);
    // Single-steps every vCPU that stands inside the slow return path up to its iretq, so
    // that no thread can leave through it unseen.
    ErrorOr<void> settle_slow_paths();
    // Restores the thread's registers on the vCPU it now sits on.
    ErrorOr<void> put_back(VcpuId vcpu);
    ErrorOr<void> repair_signal_frame(VcpuId vcpu, const kvm_regs& at_iret, uint64_t frame_rsp);
    void journal_thread();

    GuestAccess& guest_;
    KernelEntryPoints kernel_;
    RecoveryLog& log_;
    InjectorOptions options_;
    InjectorStats stats_;

    Phase phase_ = Phase::kIdle;
    VcpuId vcpu_ = 0;
    kvm_regs original_{};
    uint64_t cr3_ = 0;
    uint64_t cookie_ = 0;
    uint64_t expected_rcx_ = 0;
    uint64_t last_result_ = 0;
    BreakpointSet traps_;
};

}  // namespace cloudvmi
