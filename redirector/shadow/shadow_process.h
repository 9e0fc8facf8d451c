// The shadow: a guest process of our own in which every redirected syscall runs.
//
// Waiting for guest activity on every request is unacceptable (an idle guest may make no
// syscall for seconds), so the first hijack is used once, to create a dedicated process:
//
//   1. In the hijacked root thread P (vetted: root, no seccomp filter): mmap the region's
//      first pages shared and writable, copy the shadow code in, make its page read+execute,
//      check in one batch run in P that P lives in the initial mount, pid and user
//      namespaces and root; then clone() from the region, where the child S1 starts and
//      P comes back, wait4() the child, munmap. S1 never runs P's code.
//   2. S1 clones S2 and exits, so S2 is adopted by init (no zombie under P when S2 ends)
//      and reports S2's pid through the shared page.
//   3. P is given back untouched. S2 is caught on its park loop, then made a proper
//      daemon: setsid, chdir /, every inherited fd closed, signals blocked, named
//      cloudvmi-shadow (comm and cmdline), its region locked in memory.
//
// S2 then loops in its page: it runs a posted batch of syscalls (shadow_payload.S) or
// sleeps with exponential back-off. The trap engine here posts a batch and waits on a
// breakpoint at the end of the batch code: one VM stop per batch, whatever its size.
// A lease counter in the page makes S2 exit on its own if nobody renews it (a dead host).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/guest/guest_access.h"
#include "redirector/inject/breakpoint_set.h"
#include "redirector/inject/kernel_discovery.h"
#include "redirector/inject/syscall_injector.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/syscall_batch.h"

namespace cloudvmi {

struct ShadowOptions {
    // The whole bootstrap: finding a thread, starting, catching and configuring the shadow.
    Millis attach_timeout{20000};
    Millis acquire_timeout{3000};  // catching a parked shadow (well above sleep_max)
    Millis batch_timeout{10000};   // one batch
    // Recovery after a crash: how long to wait for a syscall the dead session left running.
    Millis recovery_timeout{600000};
    uint64_t sleep_min_ns = 1'000'000;
    // The longest sleep of an idle shadow: the wait of a request to an idle VM (half of it
    // on average) against the wake-ups an idle guest pays for (1 s / this).
    uint64_t sleep_max_ns = 40'000'000;
    // How long a shadow survives without the host renewing its lease, counted in park-loop
    // iterations at the longest sleep.
    Millis lease{600000};
    int max_bootstrap_attempts = 8;
    // Told each step of a bootstrap, for a status display.
    std::function<void(const std::string&)> on_progress;
};

// Offsets of the shadow code's entry points within its region.
struct ShadowCode {
    static std::span<const uint8_t> bytes();
    static uint64_t child_entry();
    static uint64_t park_loop();
    static uint64_t sleep_syscall();
    static uint64_t after_sleep();
    static uint64_t run_posted();
    static uint64_t run_batch();
    static uint64_t batch_done();
    static uint64_t exit();
};

// Whether the hijacked thread's syscall in flight is the clone of the helper: that clone
// is the one syscall whose return lands at the region's child entry.
bool helper_clone_in_flight(const RecoveryRecord& record);
// The helper's pid when the syscall the injector just finished was that clone and it
// succeeded while no helper was logged yet; nullopt otherwise.
std::optional<int64_t> helper_cloned_just_now(const SyscallInjector& inj,
                                              const RecoveryRecord& record);

// Unmaps the region the log names in the held thread's process (the thread's own return
// address becomes its landing again).
ErrorOr<void> unmap_parent_region(SyscallInjector& inj, RecoveryLog& log);

struct BootstrapStats {
    std::string borrowed;       // "pid 123 (/usr/sbin/cron)": the process the shadow came from
    double hijack_ms = 0;       // from arming the trap to holding a root thread
    double first_catch_ms = 0;  // from giving P back to catching the shadow
    double total_ms = 0;
    int attempts = 0;
    InjectorStats injector;
};

class ShadowProcess {
  public:
    enum class State { kHeld, kParked, kLost, kGone };

    // Creates a shadow; the guest must be stopped and is left stopped, the shadow held.
    static ErrorOr<std::unique_ptr<ShadowProcess>> create(GuestAccess& guest,
                                                          const KernelEntryPoints& kernel,
                                                          RecoveryLog& log, ShadowOptions options);

    // Takes over a shadow described by a recovery record (after a crash), assumed parked.
    static std::unique_ptr<ShadowProcess> adopt(GuestAccess& guest, RecoveryLog& log,
                                                const RecoveryRecord& record,
                                                ShadowOptions options);

    ~ShadowProcess();

    // Runs a batch; leaves the shadow held and the guest stopped.
    ErrorOr<BatchOutcome> execute(const SyscallBatch& batch);
    // Lets the guest run with the shadow looping in its page; renews the lease.
    ErrorOr<void> park();
    // Makes the shadow exit and lets the guest run. Idempotent.
    ErrorOr<void> terminate();
    // For a parked shadow whose lease the caller shortened by other means: forgets it
    // (it exits by itself at its next sleep) without touching the VM.
    void give_up_to_lease();
    // For a parked shadow in a VM that someone else stopped: shortens its lease through
    // the stub, which does not resume the VM, and forgets it; it exits soon after the VM
    // runs again. Writes only into a page proven to be still its control block.
    void end_in_stopped_vm();

    State state() const { return state_; }
    int64_t pid() const { return pid_; }
    uint64_t region() const { return region_; }
    uint64_t cr3() const { return cr3_; }
    uint64_t generation() const { return generation_; }
    // The lease, in sleeps of the park loop, that the host writes when it renews it.
    uint64_t lease_iterations() const;
    const BootstrapStats& bootstrap_stats() const { return bootstrap_; }
    double last_acquire_ms() const { return last_acquire_ms_; }

  private:
    ShadowProcess(GuestAccess& guest, RecoveryLog& log, ShadowOptions options);

    ErrorOr<void> bootstrap_once(const KernelEntryPoints& kernel, std::set<uint64_t>& skip,
                                 bool& retry_other_thread);
    void progress(const std::string& step);
    // The sooner of the attach deadline (while bootstrapping) and `timeout` from now.
    Deadline op_deadline(Millis timeout) const { return Deadline::after(timeout).min(deadline_); }
    // In the hijacked thread P: map the region, copy the code, vet P, clone the helper, reap
    // it, unmap. Leaves pid_ and region_ set, or `refusal` saying why P is unsuitable.
    ErrorOr<void> start_in_hijacked_thread(SyscallInjector& inj, std::string& refusal);
    // Maps the region's first pages in P with the code read+execute; 0 and `refusal` set
    // if P may not have executable memory.
    ErrorOr<uint64_t> map_parent_region(SyscallInjector& inj, std::string& refusal);
    // Why P must not be used ("" if it may), from a batch run in P.
    ErrorOr<std::string> vet_parent(SyscallInjector& inj, uint64_t region);
    ErrorOr<BatchOutcome> run_batch_in(SyscallInjector& inj, uint64_t region,
                                       const SyscallBatch& batch);
    ErrorOr<void> reap_helper_and_unmap(SyscallInjector& inj);
    ErrorOr<void> catch_and_configure();
    ErrorOr<void> catch_newborn();
    // After a failed bootstrap: catch a shadow that may have been started, and end it.
    void end_stray_shadow();
    // After a failed bootstrap step, with P still hijacked: reap the helper, unmap the region.
    void undo_partial_bootstrap(SyscallInjector& inj);
    ErrorOr<void> configure();
    // Brings a parked shadow to its after_sleep breakpoint.
    ErrorOr<void> acquire();
    // Resumes until the shadow stops at `addr`; other threads there are stepped over.
    ErrorOr<VcpuId> run_until_shadow_at(uint64_t addr, Deadline deadline, bool any_space,
                                        uint64_t exclude_space);
    ErrorOr<void> set_rip(uint64_t address);
    // Best effort for a shadow we lost: shorten its lease so it exits by itself (only in a
    // page that still holds its control block).
    void poison_lease();
    void journal();
    std::vector<uint8_t> initial_control_block() const;

    GuestAccess& guest_;
    RecoveryLog& log_;
    ShadowOptions options_;
    BreakpointSet traps_;
    State state_ = State::kGone;
    int64_t pid_ = 0;
    uint64_t region_ = 0;
    uint64_t cr3_ = 0;
    uint64_t generation_ = 0;  // random, in the control block: proves a page is this shadow's
    VcpuId vcpu_ = 0;
    bool in_flight_ = false;
    // For a shadow adopted before it was ever caught: its address space is unknown, but it
    // is not the one of the process that cloned it.
    uint64_t parent_space_ = 0;
    bool helper_cloned_ = false;               // this attempt's clone ran: a shadow may exist
    size_t mapped_size_ = SHADOW_REGION_SIZE;  // of the region, until the shadow maps the rest
    bool foreign_parent_ = false;              // this attempt's P is in other namespaces
    std::set<int64_t> foreign_pids_;         // such processes: they and their children are skipped
    Deadline deadline_ = Deadline::never();  // the attach deadline while bootstrapping
    BootstrapStats bootstrap_;
    double last_acquire_ms_ = 0;
};

}  // namespace cloudvmi
