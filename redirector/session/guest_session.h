// One VM, as the rest of CloudVMI sees it: a place to run batches of syscalls.
//
// A GuestSession owns the gdbstub connection, the recovery log and its guardian, the
// discovered kernel entry points and the shadow process. It attaches lazily on the first
// request, re-creates a shadow that was lost, and hands the guest over to the guardian if
// the connection breaks. All guest access is serialised by one mutex per session; sessions
// of different VMs share nothing and run in parallel.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/deadline.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "redirector/engines/batch_engine.h"
#include "redirector/engines/mailbox_engine.h"
#include "redirector/gdb/gdb_client.h"
#include "redirector/guest/guest_access.h"
#include "redirector/guest/guest_ram.h"
#include "redirector/guest/vm_run_state.h"
#include "redirector/inject/kernel_discovery.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/recovery/guardian.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/shadow/syscall_batch.h"

namespace cloudvmi {

// How batches reach the shadow once it exists.
enum class EngineKind {
    kMailbox,  // through guest RAM from the host, no VM stop (falls back to kTrap if unavailable)
    kTrap,     // through the gdbstub: one VM stop per batch
};
const char* to_string(EngineKind e);

// Opens the link to the VM behind an endpoint; the gdbstub by default, a fake in tests.
using GuestConnector =
    std::function<ErrorOr<std::unique_ptr<GuestAccess>>(const gdb::Endpoint& endpoint)>;

// Opens the owner's view of the VM's run state (tests: a fake).
using RunStateConnector = std::function<ErrorOr<std::unique_ptr<VmRunStateSource>>()>;

// A gdbstub the VM opens on request (libvirt: through its monitor) and closes again.
struct StubOpener {
    std::function<ErrorOr<void>()> open;  // before each attach; the endpoint then listens
    std::function<void()> close;          // after a clean detach
};

struct SessionOptions {
    std::string gdb_endpoint;  // "unix:/path" or "tcp:host:port"
    GuestConnector connect;    // empty: GdbstubAccess::attach with `client`
    // Set when the stub at gdb_endpoint exists only while a session needs it. After a
    // crash it stays open: the guardian and the next attach reach the VM through it.
    StubOpener stub;
    // A QMP socket of the VM's QEMU for cloudvmi alone. With it, a VM paused by anyone else
    // is never attached to nor resumed, and its requests fail at once; without it, only a
    // pause that happens while cloudvmi has the VM running is seen (through the stub).
    std::string qmp;
    RunStateConnector watch_run_state;  // empty: QmpMonitor::connect(qmp)
    gdb::ClientOptions client;
    ShadowOptions shadow;
    EngineKind engine = EngineKind::kMailbox;
    MailboxOptions mailbox;
    // Trap engine: after a batch the shadow stays caught (guest paused) this long, so that
    // the next request of a burst (lookup, open, read, release of one `cat`) needs no new
    // catch.
    Millis linger{3};
    Millis attach_timeout{10000};  // waiting for the session lock (another owner)
    std::string state_dir;         // recovery logs and locks; "" = default_state_dir()
    std::string guardian_program;  // cloudvmi binary for `guard`; "" = no guardian
};

enum class SessionState { kDetached, kAttaching, kAttached, kError };
const char* to_string(SessionState s);

struct SessionStatus {
    SessionState state = SessionState::kDetached;
    std::string error;  // last failure, for kError
    KernelEntryPoints kernel;
    int64_t shadow_pid = 0;
    uint64_t shadow_region = 0;
    pid_t guardian_pid = 0;
    BootstrapStats bootstrap;
    uint64_t batches = 0;
    uint64_t failures = 0;
    uint64_t shadows_created = 0;
    std::string recovered;              // what an earlier, crashed session left and we undid
    std::string progress;               // the step a bootstrap in progress is at
    RunControlCounters bootstrap_cost;  // VM stops and breakpoint changes of the last bootstrap
    RunControlCounters vm_cost;         // all of this session's, attach included
    std::string engine;                 // "mailbox", "trap", or "trap (mailbox: why not)"
    bool paused_by_others = false;      // the VM was stopped by someone else; left so
    std::string vm_status;              // its owner's view (QMP status); "" = not watched
    uint64_t distrusted = 0;            // shadows discarded because they failed a check
    uint64_t stuck_shadows_ended = 0;   // shadows left blocked in a guest syscall, then ended
    MailboxStats mailbox;
};

class GuestSession {
  public:
    explicit GuestSession(SessionOptions options);
    ~GuestSession();
    GuestSession(const GuestSession&) = delete;
    GuestSession& operator=(const GuestSession&) = delete;

    // Attaches now instead of on the first batch.
    ErrorOr<void> attach();
    // Ends the shadow, removes every trace and lets the guest run. Idempotent.
    ErrorOr<void> detach();

    // Runs a batch in the shadow (attaching first if needed). A lost shadow is replaced
    // and the batch run in the new one, unless `on_shadow` (a BatchOutcome::shadow) binds
    // it to the shadow whose fds it uses: then it fails with EBADF rather than hand those
    // fd numbers to another process.
    ErrorOr<BatchOutcome> run(const SyscallBatch& batch,
                              std::optional<uint64_t> on_shadow = std::nullopt);

    // Closes a guest fd of shadow `shadow` with the next batch (or before the shadow is
    // parked), saving a round trip; an fd of a shadow replaced meanwhile is dropped.
    void defer_close(int fd, uint64_t shadow);

    // A snapshot of the session's state; never waits for a guest operation in progress.
    SessionStatus status() const;
    SessionState state() const;
    const SessionOptions& options() const { return options_; }

    static std::string default_state_dir();

  private:
    ErrorOr<void> attach_locked();
    // The recovery log a dead session left dirty about this run of the VM, if any.
    std::optional<RecoveryRecord> leftover_record_locked(uint64_t identity);
    // Writes this session's record (the VM paused by our connection, from now until it
    // runs again for us) and starts its guardian.
    ErrorOr<void> claim_session_locked(const gdb::Endpoint& endpoint, uint64_t identity);
    // The VM has run for us since we connected (or a detach resumed it).
    void forget_connect_pause_locked();
    ErrorOr<std::unique_ptr<GuestAccess>> connect_locked(const gdb::Endpoint& endpoint);
    ErrorOr<void> ensure_shadow_locked();
    ErrorOr<VcpuId> first_vcpu_locked();  // EPROTO if the stub reports none
    // Finds the kernel's entry points again (the guest stopped); they move at a reboot.
    ErrorOr<void> refresh_kernel_locked();
    ErrorOr<void> detach_locked();
    // Gives up the guest: the guardian (or the next attach) restores what the log names.
    void fail_locked(const Error& error);
    void release_lock_and_guardian_locked();
    // The background thread that runs the engine's idle work when due.
    void idle_worker_main();
    void wake_idle_work_locked();
    void update_status(const std::function<void(SessionStatus&)>& change);
    // Up to `room` deferred closes, as close ops.
    std::vector<SyscallBatch::Op> take_deferred_closes(size_t room);
    uint64_t current_shadow() const;  // the count of shadows created: the newest one's number
    // With a new shadow held: serves it with the mailbox engine if wanted and possible,
    // else with the trap engine.
    void start_engine_locked();
    ErrorOr<std::unique_ptr<MailboxEngine>> start_mailbox_locked();
    void use_trap_engine_locked();
    // Runs a batch through the engine and decides what its failures mean for the shadow.
    ErrorOr<BatchOutcome> run_in_engine_locked(const SyscallBatch& batch);
    // A mailbox batch was not taken: tells a VM paused by others from a lost shadow.
    Error not_taken_locked(const Error& e);
    void discard_shadow_locked(const char* why);
    // Ends, through the current shadow, the shadows left blocked in a guest syscall.
    void end_stuck_shadows_locked();
    // Whether the VM's owner view (QMP) says someone else stopped it; false when there is
    // none, or while we hold the VM stopped ourselves (the view cannot tell then).
    ErrorOr<bool> stopped_by_owner_locked();
    // The owner view, connected if configured and not yet.
    ErrorOr<VmRunStateSource*> run_state_source_locked();
    Error paused_error() const;
    // status_.paused_by_others without copying the whole status (asked on every batch).
    bool paused_by_others() const;
    std::string status_copy_vm_status() const;

    SessionOptions options_;
    mutable std::mutex mutex_;         // guards everything below; never held across sessions
    std::condition_variable idle_cv_;  // wakes the idle worker: the engine's due time changed
    std::thread idle_worker_;
    bool stopping_ = false;

    mutable std::mutex status_mutex_;  // guards status_ only; taken after mutex_, never before
    SessionStatus status_;
    KernelEntryPoints kernel_;
    std::string log_path_;
    std::string lock_path_;
    UniqueFd lock_fd_;
    std::unique_ptr<RecoveryLog> log_;
    std::optional<GuardianHandle> guardian_;
    std::unique_ptr<GuestAccess> guest_;
    std::unique_ptr<VmRunStateSource> owner_view_;  // the run state as the VM's owner sees it
    // A session of ours failed while talking to the stub: a "paused" VM at the next attach
    // may be our own late interrupt's doing (QEMU pauses, as for an owner's stop).
    bool own_pause_possible_ = false;
    bool stub_opened_ = false;  // options_.stub.open() succeeded; closed by a clean detach
    // The last failure to make a shadow, repeated until shadow_retry_after_.
    static constexpr Millis kShadowRetryPause{1000};
    std::optional<Error> last_shadow_failure_;
    Clock::time_point shadow_retry_after_{};
    std::unique_ptr<ShadowProcess> shadow_;
    std::unique_ptr<GuestRam> ram_;        // found once per attach
    std::unique_ptr<BatchEngine> engine_;  // serves the current shadow
    MailboxEngine* mailbox_ = nullptr;     // engine_, when it is the mailbox one (its stats)
    // Guest fds to close with the next batch, each with the shadow it belongs to.
    struct DeferredClose {
        int fd;
        uint64_t shadow;
    };
    mutable std::mutex closes_mutex_;  // guards deferred_closes_ only; a leaf, after mutex_
    std::vector<DeferredClose> deferred_closes_;
    // Shadows given up while blocked in a guest syscall, to be ended by the next one.
    static constexpr size_t kMaxStuckShadows = 16;
    std::vector<int64_t> stuck_shadows_;
};

}  // namespace cloudvmi
