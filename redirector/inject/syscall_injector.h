// Runs syscalls inside a guest thread that the guest itself was running.
//
// A breakpoint on the kernel's return-to-user sysretq catches a thread whose registers
// already hold its user values. That breakpoint is kernel-wide: every thread of the guest
// returning from a syscall stops there, and under TCG every stop flushes QEMU's translated
// code. So it is armed only until one candidate stands there, and never while our
// syscalls run.
//
// From then on only our own thread can stop. Its first syscall is entered by pointing rip
// at entry_SYSCALL_64 with rax = nr and the arguments in rdi, rsi, rdx, r10, r8, r9 and
// rcx = its own user return address: exactly what the `syscall` instruction before that
// address would have done. The kernel returns to that user address (the "landing"),
// where a breakpoint of ours waits; every later syscall re-executes the `syscall`
// instruction just before the landing from user mode. The landing can be moved into a
// page only the borrowed process maps (the shadow region), so that no other thread ever
// passes it. A signal delivered meanwhile runs the process's own handler, whose
// rt_sigreturn comes back to the landing; a restarted syscall re-executes the same
// `syscall` instruction: neither needs the kernel's slow return path to be watched.
//
// Our thread is told from others at the landing by its address space and its user stack
// pointer, which no other thread shares. Its registers are put back bit for bit.
//
// Used only to bootstrap the shadow process (shadow_process.h); everything else runs there.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <set>
#include <string>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/guest/guest_access.h"
#include "redirector/inject/breakpoint_set.h"
#include "redirector/inject/kernel_discovery.h"
#include "redirector/journal/recovery_log.h"

namespace cloudvmi {

struct InjectorStats {
    int candidates_seen = 0;  // threads stopped at the kernel-wide trap while looking for one
    int candidates_rejected = 0;
    int kernel_trap_stops = 0;        // every stop at the kernel-wide trap
    double kernel_trap_armed_ms = 0;  // how long it was armed, in all
    int kernel_trap_rests = 0;        // times it was lifted for a while (busy unusable threads)
    int landings = 0;                 // our own thread back at its landing
    int foreign_stops = 0;            // other threads at one of our user breakpoints
    double hijack_ms = 0;
    std::string rejected;  // why candidates were let go ("pid 412: uid 100; ...")
};

class SyscallInjector {
  public:
    // Every wait of this injector ends at `deadline`.
    SyscallInjector(GuestAccess& guest, const KernelEntryPoints& kernel, RecoveryLog& log,
                    Deadline deadline);
    ~SyscallInjector();
    SyscallInjector(const SyscallInjector&) = delete;
    SyscallInjector& operator=(const SyscallInjector&) = delete;

    // With the guest stopped: arms the kernel-wide trap, lets the guest run, and keeps the
    // first thread that returns to user mode after a `syscall` instruction, runs as root
    // and has no seccomp filter (checked with getpid, getuid and prctl(PR_GET_SECCOMP),
    // which every filter systemd or a container runtime installs allows), and whose
    // address space is not in `skip_cr3s`; the VM's init only if no other such thread comes
    // by within a second (pid 1 of a container, whose pid 2 is not kthreadd, never). Processes
    // in `foreign_pids` (found in other namespaces before) and their children are let go too.
    // Busy threads that are let go make the trap rest now and then (catch_candidate).
    // Returns with that thread held and the guest stopped.
    ErrorOr<void> hijack(const std::set<uint64_t>& skip_cr3s = {},
                         const std::set<int64_t>& foreign_pids = {});
    bool hijacked() const { return phase_ != Phase::kIdle; }

    // Runs one syscall in the held thread and returns raw rax (-4095..-1 is -errno).
    ErrorOr<uint64_t> syscall(uint64_t nr, std::initializer_list<uint64_t> args);
    // Lets the held thread run code of ours from `entry` (user mode, its registers
    // otherwise its own) until it reaches `landing`; for a batch run in the borrowed process.
    ErrorOr<void> run_code(uint64_t entry, uint64_t landing);
    // Where later syscalls return: a user address of the borrowed process right after a
    // `syscall` instruction (checked). Initially the thread's own return address.
    ErrorOr<void> set_landing(uint64_t landing);
    uint64_t landing() const { return landing_; }

    // Memory of the hijacked process (its thread is current on vcpu()).
    ErrorOr<void> read_memory(uint64_t va, std::span<uint8_t> out);
    ErrorOr<void> write_memory(uint64_t va, std::span<const uint8_t> data);

    // Gives the thread back exactly as it was and disarms the traps; the guest stays
    // stopped. Safe to call in any phase: a syscall still in flight is waited for (until
    // the deadline; then the traps stay armed and the log names the thread).
    ErrorOr<void> release();
    // The deadline for what comes next (cleanup after a failure gets a short grace).
    void set_deadline(Deadline deadline) { deadline_ = deadline; }

    // Takes charge of a thread a dead process left hijacked (from its recovery record). The
    // guest must be stopped with no breakpoints set. Afterwards the thread is either held
    // (hijacked() and syscalls possible) or still running our code: finish() waits for it.
    ErrorOr<void> adopt(const RecoveryRecord& record);
    bool in_flight() const { return phase_ == Phase::kInFlight; }
    // Waits for a syscall left in flight to come back; the thread is then held.
    ErrorOr<void> finish();
    // rax of the last syscall that came back (also one finished by finish()).
    uint64_t last_result() const { return last_result_; }

    VcpuId vcpu() const { return vcpu_; }
    int64_t pid() const { return pid_; }  // of the held thread's process
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

    // Cleanup after a failure may outlive the attach deadline by this much, all steps
    // together: giving a thread back must not be skipped because time ran out.
    static constexpr Millis kCleanupGrace{3000};
    // How long a wait for the borrowed thread runs before checking that it still exists.
    static constexpr Millis kLivenessSlice{2000};

  private:
    enum class Phase { kIdle, kHeld, kInFlight };

    // Waits at the kernel-wide trap for a thread that may be tried; leaves it held.
    ErrorOr<void> catch_candidate(const std::set<uint64_t>& rejected);
    // Why the held candidate must not be borrowed ("" if it may), from injected checks.
    ErrorOr<std::string> vet_candidate(Deadline init_allowed,
                                       const std::set<int64_t>& foreign_pids);
    // Gives a vetted-out candidate back and lets the guest run on towards the next one.
    ErrorOr<void> let_go(const std::string& why);
    // With the guest stopped at the kernel-wide trap: lets it run without the trap for
    // `rest`, then arms it again and leaves the guest running.
    ErrorOr<void> rest_trap(Millis rest);
    ErrorOr<void> step_over(VcpuId vcpu, uint64_t addr);
    // Writes `regs` to the thread, lets the guest run and waits for it at the landing.
    ErrorOr<kvm_regs> run_to_landing(const kvm_regs& regs);
    // Waits in slices of kLivenessSlice; between slices, ESRCH (and the thread no longer
    // held) if the borrowed thread's process is gone.
    ErrorOr<kvm_regs> wait_for_landing();
    // Whether the borrowed process's address space still exists (true if it cannot tell).
    ErrorOr<bool> address_space_alive();
    // Forgets the thread whose process is gone; the error to return.
    Error thread_gone();
    bool is_our_thread_at_landing(const VcpuState& s) const;
    // Restores the thread's registers on the vCPU it now sits on.
    ErrorOr<void> put_back();
    void journal_thread();

    GuestAccess& guest_;
    KernelEntryPoints kernel_;
    RecoveryLog& log_;
    Deadline deadline_;
    InjectorStats stats_;

    Phase phase_ = Phase::kIdle;
    bool in_kernel_ = false;  // held at sysretq, not yet in user mode
    VcpuId vcpu_ = 0;
    kvm_regs original_{};
    uint64_t cr3_ = 0;
    int64_t pid_ = 0;
    uint64_t landing_ = 0;
    uint64_t last_result_ = 0;
    BreakpointSet traps_;
};

}  // namespace cloudvmi
