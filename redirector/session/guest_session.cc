#include "redirector/session/guest_session.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "common/log.h"
#include "common/paths.h"
#include "common/random.h"
#include "common/strings.h"
#include "redirector/engines/trap_engine.h"
#include "redirector/guest/gdbstub_access.h"
#include "redirector/guest/qmp_monitor.h"
#include "redirector/recovery/recovery.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"
#include "redirector/x86/page_walker.h"

namespace cloudvmi {

namespace {

// A file name that identifies the VM behind an endpoint.
std::string state_name(const std::string& endpoint) {
    std::string s;
    for (char c : endpoint) {
        s += (std::isalnum(static_cast<unsigned char>(c)) != 0) ? c : '_';
    }
    if (s.size() > 80) s = s.substr(s.size() - 80);
    return strformat("%s-%08zx", s.c_str(), std::hash<std::string>{}(endpoint)&0xffffffff);
}

}  // namespace

const char* to_string(SessionState s) {
    switch (s) {
        case SessionState::kDetached:
            return "idle";
        case SessionState::kAttaching:
            return "attaching";
        case SessionState::kAttached:
            return "attached";
        case SessionState::kError:
            return "error";
    }
    return "?";
}

const char* to_string(EngineKind e) {
    return e == EngineKind::kMailbox ? "mailbox" : "trap";
}

std::string GuestSession::default_state_dir() {
    if (const char* env = std::getenv("CLOUDVMI_STATE_DIR"); env != nullptr && *env != '\0') {
        return env;
    }
    if (::geteuid() == 0) return "/run/cloudvmi";
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg != nullptr && *xdg != '\0') {
        return std::string(xdg) + "/cloudvmi";
    }
    return strformat("/tmp/cloudvmi-%d", static_cast<int>(::geteuid()));
}

GuestSession::GuestSession(SessionOptions options) : options_(std::move(options)) {
    if (options_.state_dir.empty()) options_.state_dir = default_state_dir();
    std::string name = state_name(options_.gdb_endpoint);
    log_path_ = options_.state_dir + "/" + name + ".log";
    lock_path_ = options_.state_dir + "/" + name + ".lock";
    idle_worker_ = std::thread([this] { idle_worker_main(); });
}

GuestSession::~GuestSession() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    idle_cv_.notify_all();
    idle_worker_.join();
    std::lock_guard lock(mutex_);
    if (auto r = detach_locked(); !r) {
        LOG_WARN("detaching from %s: %s", options_.gdb_endpoint.c_str(),
                 r.error().describe().c_str());
    }
}

SessionStatus GuestSession::status() const {
    std::lock_guard lock(status_mutex_);
    return status_;
}

void GuestSession::update_status(const std::function<void(SessionStatus&)>& change) {
    std::lock_guard lock(status_mutex_);
    change(status_);
}

std::string GuestSession::status_copy_vm_status() const {
    std::lock_guard lock(status_mutex_);
    return status_.vm_status;
}

bool GuestSession::paused_by_others() const {
    std::lock_guard lock(status_mutex_);
    return status_.paused_by_others;
}

SessionState GuestSession::state() const {
    std::lock_guard lock(status_mutex_);
    return status_.state;
}

ErrorOr<void> GuestSession::attach() {
    std::lock_guard lock(mutex_);
    if (state() == SessionState::kAttached) return {};
    return attach_locked();
}

ErrorOr<std::unique_ptr<GuestAccess>> GuestSession::connect_locked(const gdb::Endpoint& endpoint) {
    if (options_.connect) return options_.connect(endpoint);
    return TRY(GdbstubAccess::attach(endpoint, options_.client));
}

ErrorOr<void> GuestSession::attach_locked() {
    update_status([](SessionStatus& st) { st.state = SessionState::kAttaching; });
    auto fail = [&](const Error& e) -> ErrorOr<void> {
        fail_locked(e);
        return std::unexpected(e);
    };
    if (auto r = ensure_private_dir(options_.state_dir); !r) return fail(r.error());

    // One owner per VM: a concurrent cloudvmi, or the guardian of a dead one, holds this.
    auto lock = open_private_file(lock_path_, O_RDWR | O_CREAT);
    if (!lock) return fail(lock.error());
    lock_fd_ = std::move(*lock);
    auto deadline = Deadline::after(options_.attach_timeout);
    while (::flock(lock_fd_.get(), LOCK_EX | LOCK_NB) < 0) {
        if (errno != EWOULDBLOCK) return fail(Error(errno, "locking " + lock_path_));
        if (deadline.expired()) {
            auto rec = RecoveryLog::read_file(log_path_);
            return fail(Error::unavailable(
                EBUSY, strformat("the VM at %s is held by cloudvmi process %d (or "
                                 "its guardian is restoring it)",
                                 options_.gdb_endpoint.c_str(), rec ? rec->owner_pid : 0)));
        }
        std::this_thread::sleep_for(Millis(20));
    }

    auto endpoint = gdb::Endpoint::parse(options_.gdb_endpoint);
    if (!endpoint) return fail(endpoint.error());
    uint64_t identity = endpoint->identity();
    std::optional<RecoveryRecord> leftover = leftover_record_locked(identity);

    // A VM its owner paused is not ours to run: connecting the stub keeps it stopped, but
    // the bootstrap would resume it. (Checked under the lock: the owner view's socket
    // serves one client.)
    auto stopped = stopped_by_owner_locked();
    if (!stopped || *stopped) {
        Error e = stopped ? paused_error() : stopped.error();
        release_lock_and_guardian_locked();
        update_status([&](SessionStatus& st) {
            st.state = stopped ? SessionState::kDetached : SessionState::kError;
            st.error = stopped ? "" : e.describe();
        });
        return std::unexpected(e);
    }

    auto log = RecoveryLog::open_file(log_path_, leftover.has_value());
    if (!log) return fail(log.error());
    log_ = std::move(*log);
    // The stub's pause on connecting is claimed first, so that a job killed before the VM
    // runs again leaves its guardian a VM to resume. A leftover record stays until the
    // guest it names is restored, through this connection.
    if (!leftover) {
        if (auto r = claim_session_locked(*endpoint, identity); !r) return fail(r.error());
    }
    if (options_.stub.open) {
        if (auto opened = options_.stub.open(); !opened) {
            forget_connect_pause_locked();
            return fail(opened.error().with_context("opening a gdbstub in the VM"));
        }
        stub_opened_ = true;
    }
    auto access = connect_locked(*endpoint);
    if (!access) {
        // QEMU stops the VM when it takes a stub connection, even one we gave up on.
        own_pause_possible_ = true;
        forget_connect_pause_locked();
        return fail(access.error().with_context("attaching to " + options_.gdb_endpoint));
    }
    guest_ = std::move(*access);
    if (leftover) {
        LOG_WARN("a previous session (pid %d) left the guest modified; restoring it first",
                 leftover->owner_pid);
        auto report = recover_guest(*guest_, *leftover, *log_, options_.shadow);
        if (!report) return fail(report.error().with_context("restoring after a crashed session"));
        update_status([&](SessionStatus& st) { st.recovered = report->describe(); });
        LOG_WARN("restored: %s", report->describe().c_str());
        if (auto r = claim_session_locked(*endpoint, identity); !r) return fail(r.error());
    }
    // From the VM's first run for us on, a pause is not our connection's: an owner may
    // pause it while the attach goes on, and that pause must stay if we die. (Cleared just
    // before the resume: a job killed in that one round trip leaves the VM paused.)
    guest_->before_next_resume([this] { forget_connect_pause_locked(); });

    auto vcpu = first_vcpu_locked();
    if (!vcpu) return fail(vcpu.error());
    auto snap = guest_->snapshot(*vcpu);
    if (!snap) return fail(snap.error());
    auto kernel = discover_kernel_entry_points(*guest_, *vcpu);
    if (!kernel) {
        // Nothing was changed yet: leave the guest as we found it.
        auto e = kernel.error();
        (void)detach_locked();
        update_status([&](SessionStatus& st) {
            st.state = SessionState::kError;
            st.error = e.describe();
        });
        return std::unexpected(e);
    }
    kernel_ = *kernel;
    update_status([&](SessionStatus& st) { st.kernel = *kernel; });
    if (auto r = ensure_shadow_locked(); !r) return fail(r.error());
    update_status([](SessionStatus& st) {
        st.state = SessionState::kAttached;
        st.error.clear();
    });
    wake_idle_work_locked();
    return {};
}

std::optional<RecoveryRecord> GuestSession::leftover_record_locked(uint64_t identity) {
    if (::access(log_path_.c_str(), F_OK) != 0) return std::nullopt;
    auto rec = RecoveryLog::read_file(log_path_);
    if (!rec) {
        LOG_WARN("ignoring unreadable recovery log: %s", rec.error().describe().c_str());
        return std::nullopt;
    }
    if (rec->clean) return std::nullopt;
    if (rec->about_earlier_vm_run(identity)) {
        LOG_WARN(
            "ignoring the recovery log of an earlier run of this VM (pid %d): the VM "
            "was restarted since",
            rec->owner_pid);
        return std::nullopt;
    }
    // A dead job's stub connection paused the VM and its guardian did not resume it.
    if (rec->connect_pause) own_pause_possible_ = true;
    return *rec;
}

ErrorOr<void> GuestSession::claim_session_locked(const gdb::Endpoint& endpoint, uint64_t identity) {
    auto& rec = log_->edit();
    rec = RecoveryRecord{};
    rec.session_id = random_u64() | 1;
    rec.owner_pid = ::getpid();
    rec.endpoint_identity = identity;
    rec.connect_pause = 1;
    std::snprintf(rec.endpoint, sizeof rec.endpoint, "%s", endpoint.to_string().c_str());
    log_->commit();
    if (options_.guardian_program.empty()) return {};
    GuardianArgs ga;
    ga.log_path = log_path_;
    ga.lock_path = lock_path_;
    ga.session_id = rec.session_id;
    ga.report_path = options_.state_dir + "/guardian.log";
    ga.qmp = options_.qmp;
    auto g = spawn_guardian(options_.guardian_program, ga);
    if (!g) {
        forget_connect_pause_locked();  // a detach resumes the VM; no guardian is needed
        return std::unexpected(g.error());
    }
    update_status([&](SessionStatus& st) { st.guardian_pid = g->pid; });
    guardian_ = std::move(*g);
    return {};
}

void GuestSession::forget_connect_pause_locked() {
    if (!log_ || log_->current().connect_pause == 0) return;
    log_->edit().connect_pause = 0;
    log_->commit();
}

ErrorOr<void> GuestSession::ensure_shadow_locked() {
    if (shadow_ && engine_ &&
        (shadow_->state() == ShadowProcess::State::kHeld ||
         shadow_->state() == ShadowProcess::State::kParked)) {
        return {};
    }
    // The engine refers to the shadow: it goes first.
    engine_.reset();
    mailbox_ = nullptr;
    shadow_.reset();
    if (guest_->running()) TRY(guest_->interrupt(Deadline::after(options_.client.request_timeout)));
    {
        std::lock_guard closes(closes_mutex_);
        deferred_closes_.clear();  // they belonged to the previous shadow
    }
    // A replacement: the guest may have rebooted since (a reset inside the same QEMU),
    // its kernel elsewhere (KASLR). Looking costs a few reads; a stale entry, an attach
    // that can never catch a thread.
    if (current_shadow() > 0) TRY(refresh_kernel_locked());
    ShadowOptions shadow_options = options_.shadow;
    shadow_options.on_progress = [this](const std::string& step) {
        update_status([&](SessionStatus& st) { st.progress = step; });
    };
    RunControlCounters before = guest_->counters();
    auto created = ShadowProcess::create(*guest_, kernel_, *log_, shadow_options);
    RunControlCounters after = guest_->counters();
    update_status([&](SessionStatus& st) {
        st.progress.clear();
        st.bootstrap_cost = {after.stops - before.stops,
                             after.breakpoint_changes - before.breakpoint_changes,
                             after.stopped_ms - before.stopped_ms};
        st.vm_cost = after;
    });
    auto shadow = TRY(std::move(created));
    update_status([&](SessionStatus& st) {
        st.bootstrap = shadow->bootstrap_stats();
        st.shadow_pid = shadow->pid();
        st.shadow_region = shadow->region();
        ++st.shadows_created;
    });
    shadow_ = std::move(shadow);
    start_engine_locked();
    return {};
}

ErrorOr<VcpuId> GuestSession::first_vcpu_locked() {
    auto vcpus = TRY(guest_->vcpus());
    if (vcpus.empty()) return make_error(EPROTO, "the stub reports no vCPU");
    return vcpus[0];
}

ErrorOr<void> GuestSession::refresh_kernel_locked() {
    auto kernel = TRY(discover_kernel_entry_points(*guest_, TRY(first_vcpu_locked())));
    if (kernel.syscall_entry != kernel_.syscall_entry) {
        LOG_WARN("%s: the guest kernel was restarted (syscall entry %s, was %s)",
                 options_.gdb_endpoint.c_str(), hex_u64(kernel.syscall_entry).c_str(),
                 hex_u64(kernel_.syscall_entry).c_str());
        kernel_ = kernel;
        update_status([&](SessionStatus& st) { st.kernel = kernel; });
    }
    return {};
}

void GuestSession::start_engine_locked() {
    engine_.reset();
    mailbox_ = nullptr;
    std::string engine = "trap";
    if (options_.engine == EngineKind::kMailbox) {
        auto started = start_mailbox_locked();
        if (started) {
            mailbox_ = started->get();
            engine_ = std::move(*started);
            engine = "mailbox";
        } else {
            LOG_WARN("%s: the mailbox engine is not available (%s); using the trap engine",
                     options_.gdb_endpoint.c_str(), started.error().describe().c_str());
            engine = "trap (mailbox: " + started.error().describe() + ")";
        }
    }
    if (!engine_) use_trap_engine_locked();
    update_status([&](SessionStatus& st) { st.engine = engine; });
}

void GuestSession::use_trap_engine_locked() {
    mailbox_ = nullptr;
    engine_ = std::make_unique<TrapEngine>(*shadow_, options_.linger, [this] {
        // The closes waiting for the next batch go with the last one before parking.
        std::optional<SyscallBatch> closes;
        for (const auto& op : take_deferred_closes(SHADOW_MAX_OPS)) {
            if (!closes) closes.emplace();
            closes->add(op.nr, {op.args[0]});
        }
        return closes;
    });
}

ErrorOr<std::unique_ptr<MailboxEngine>> GuestSession::start_mailbox_locked() {
    auto pid = guest_->hypervisor_pid();
    if (!pid) return make_error(ENOTSUP, "the VM's QEMU is not a local process");
    bool la57 = (TRY(guest_->snapshot(TRY(first_vcpu_locked()))).state.sregs.cr4 & kCr4La57) != 0;
    PhysicalReader read = [this](uint64_t pa, std::span<uint8_t> out) {
        return guest_->read_physical(pa, out);
    };
    if (!ram_ || ram_->qemu_pid() != *pid) {
        uint64_t probe = shadow_->region() + SHADOW_CTRL_OFFSET + CTRL_SCRATCH;
        auto t = TRY(translate_virtual(read, shadow_->cr3(), probe, la57));
        ram_ = TRY(GuestRam::locate(*pid, t.physical, *guest_));
    }
    MailboxTarget target{shadow_->pid(), shadow_->region(),     shadow_->cr3(),
                         la57,           shadow_->generation(), shadow_->lease_iterations()};
    MailboxOptions mailbox_options = options_.mailbox;
    mailbox_options.lease_renewal = options_.shadow.lease / 4;
    auto engine = std::make_unique<MailboxEngine>(*ram_, target, mailbox_options);
    TRY(shadow_->park());  // from here on the guest runs
    TRY(engine->start());
    return engine;
}

void GuestSession::discard_shadow_locked(const char* why) {
    LOG_WARN("%s: discarding shadow %lld: %s", options_.gdb_endpoint.c_str(),
             static_cast<long long>(shadow_ ? shadow_->pid() : 0), why);
    if (engine_) engine_->abandon();
    if (shadow_) shadow_->give_up_to_lease();
    engine_.reset();
    mailbox_ = nullptr;
    shadow_.reset();
    std::lock_guard closes(closes_mutex_);
    deferred_closes_.clear();
}

ErrorOr<VmRunStateSource*> GuestSession::run_state_source_locked() {
    if (owner_view_) return owner_view_.get();
    if (options_.watch_run_state) {
        owner_view_ = TRY(options_.watch_run_state());
    } else if (!options_.qmp.empty()) {
        auto monitor =
            QmpMonitor::connect(options_.qmp, Deadline::after(options_.client.request_timeout));
        if (!monitor) {
            return std::unexpected(monitor.error().with_context(
                "watching whether its owner paused the VM (the qmp: socket)"));
        }
        owner_view_ = std::move(*monitor);
    }
    return owner_view_.get();
}

ErrorOr<bool> GuestSession::stopped_by_owner_locked() {
    auto* view = TRY(run_state_source_locked());
    if (view == nullptr) return false;
    // While we hold the VM stopped, the view says "debug" or "paused" whoever else paused
    // it (QEMU ignores a stop of a VM that is not running): nothing to learn.
    if (guest_ && !guest_->running() && !paused_by_others()) return false;
    // The stub's stop reply for the owner's pause is consumed here, so that it is never
    // taken later for the answer to an interrupt of ours.
    bool stub_saw_stop = guest_ && guest_->running() ? TRY(guest_->stopped_by_others()) : false;
    auto state = view->current(Deadline::after(options_.client.request_timeout));
    if (!state) {
        Error e = state.error().with_context(view->describe());
        owner_view_.reset();  // reconnected next time (QEMU may have been restarted)
        return std::unexpected(e);
    }
    // An interrupt or a stub connection of a session of ours that failed (QEMU did not
    // answer in time) may have reached QEMU late: it pauses the VM, as an owner would.
    bool our_late_pause = !guest_ && own_pause_possible_ && state->status == "paused";
    if (our_late_pause) {
        LOG_WARN(
            "%s: the VM is paused, maybe by a stub request of ours that QEMU took late; "
            "taking the pause as ours",
            options_.gdb_endpoint.c_str());
    }
    if (state->running || our_late_pause) own_pause_possible_ = false;
    bool stopped = !state->running && !our_late_pause;
    bool was_paused = paused_by_others();
    update_status([&](SessionStatus& st) {
        st.vm_status = state->status;
        st.paused_by_others = stopped;
    });
    if (stopped) {
        if (!was_paused) {
            LOG_WARN("%s: the VM was stopped by someone else (status %s); it stays so",
                     options_.gdb_endpoint.c_str(), state->status.c_str());
        }
        return true;
    }
    if (state->running && guest_ && (stub_saw_stop || was_paused)) guest_->resumed_by_others();
    if (state->running && was_paused) {
        LOG_INFO("%s: the VM runs again (%s)", options_.gdb_endpoint.c_str(),
                 view->describe().c_str());
    }
    return false;
}

Error GuestSession::paused_error() const {
    std::string status = status_copy_vm_status();
    return Error::unavailable(EAGAIN, "the VM is stopped (" +
                                          (status.empty() ? std::string("paused") : status) +
                                          ", not by cloudvmi); it is left so");
}

Error GuestSession::not_taken_locked(const Error& e) {
    auto others = guest_->stopped_by_others();
    if (others && *others) {
        update_status([](SessionStatus& st) { st.paused_by_others = true; });
        LOG_WARN("%s: the VM was paused by someone else; it stays paused",
                 options_.gdb_endpoint.c_str());
    }
    if (paused_by_others()) return paused_error();
    // Running, yet the shadow did not take the batch: it is gone or stuck.
    discard_shadow_locked("it did not take a request");
    return Error::unavailable(EAGAIN,
                              e.describe() + ": the shadow did not answer; it will be replaced");
}

ErrorOr<BatchOutcome> GuestSession::run_in_engine_locked(const SyscallBatch& batch) {
    if (mailbox_) {
        // Paused by its owner: a shadow that still sleeps would take a batch within its
        // longest sleep once the VM runs again; no need to wait the full take timeout.
        Millis paused_wait = std::min(options_.mailbox.take_timeout,
                                      std::chrono::duration_cast<Millis>(std::chrono::nanoseconds(
                                          3 * options_.shadow.sleep_max_ns)));
        mailbox_->set_take_timeout(paused_by_others() ? paused_wait
                                                      : options_.mailbox.take_timeout);
    }
    if (!engine_) return make_error(ESRCH, "no shadow serves this VM at the moment");
    auto out = engine_->execute(batch, Deadline::after(options_.shadow.batch_timeout));
    if (mailbox_) update_status([&](SessionStatus& st) { st.mailbox = mailbox_->stats(); });
    wake_idle_work_locked();
    if (out) {
        if (paused_by_others()) {
            guest_->resumed_by_others();
            update_status([](SessionStatus& st) { st.paused_by_others = false; });
        }
        return out;
    }
    const Error& e = out.error();
    bool nothing_ran = !engine_->posted();
    switch (e.code()) {
        case EBADMSG:
            update_status([](SessionStatus& st) { ++st.distrusted; });
            discard_shadow_locked(e.describe().c_str());
            // ESRCH: run() makes a new shadow and runs the batch there.
            if (nothing_ran) return make_error(ESRCH, "the shadow failed a check: " + e.describe());
            return std::unexpected(e);
        case EAGAIN:
            return std::unexpected(not_taken_locked(e));
        case ETIMEDOUT:
            // Blocked in the guest (a read nobody answers), it would never see its lease
            // end: the next shadow ends it.
            if (shadow_ && stuck_shadows_.size() < kMaxStuckShadows)
                stuck_shadows_.push_back(shadow_->pid());
            discard_shadow_locked("stuck in a syscall");
            return std::unexpected(e);
        case EFAULT: {
            if (!nothing_ran || !mailbox_) return std::unexpected(e);
            // A page beyond the RAM reachable from the host: this shadow is served through
            // the stub from now on.
            LOG_WARN("%s: %s; using the trap engine for this shadow", options_.gdb_endpoint.c_str(),
                     e.describe().c_str());
            use_trap_engine_locked();
            update_status(
                [&](SessionStatus& st) { st.engine = "trap (mailbox: " + e.describe() + ")"; });
            return engine_->execute(batch, Deadline::after(options_.shadow.batch_timeout));
        }
        default:
            // QEMU gone (ENOTCONN) fails the session in run(), like a broken stub link.
            return std::unexpected(e);
    }
}

// A shadow is ended only while /proc/PID/comm still names it: the pid may have been reused.
void GuestSession::end_stuck_shadows_locked() {
    using B = SyscallBatch;
    while (!stuck_shadows_.empty() && engine_) {
        int64_t pid = stuck_shadows_.back();
        stuck_shadows_.pop_back();
        if (shadow_ && pid == shadow_->pid()) continue;  // the pid now names the live shadow
        SyscallBatch check;
        auto path = check.input_string(strformat("/proc/%lld/comm", static_cast<long long>(pid)));
        auto open = check.add(x86abi::kOpenat,
                              {B::imm_signed(x86abi::kAtFdcwd), B::buf(path),
                               B::imm(x86abi::kORdonly | x86abi::kOCloexec)},
                              true);
        auto comm = check.output(64);
        auto read = check.add(x86abi::kRead, {B::result_of(open), B::buf(comm), B::imm(64)});
        check.filled_by(comm, read, B::Fill::kResultBytes);
        check.add(x86abi::kClose, {B::result_of(open)});
        auto out = run_in_engine_locked(check);
        if (!out || out->failed(open) || out->failed(read)) continue;  // gone already
        const auto& name = out->bytes(comm);
        if (std::string(name.begin(), name.end()) != "cloudvmi-shadow\n") continue;
        SyscallBatch kill;
        auto killed = kill.add(x86abi::kKill, {B::imm(static_cast<uint64_t>(pid)), B::imm(9)});
        auto done = run_in_engine_locked(kill);
        bool ok = done && !done->failed(killed);
        LOG_WARN("%s: shadow %lld, left blocked in a guest syscall: %s",
                 options_.gdb_endpoint.c_str(), static_cast<long long>(pid),
                 ok ? "ended" : "could not be ended");
        if (ok) update_status([](SessionStatus& st) { ++st.stuck_shadows_ended; });
    }
}

// Never waits for a batch in progress (it is called when a FUSE handle is released).
void GuestSession::defer_close(int fd, uint64_t shadow) {
    if (shadow != current_shadow()) return;
    std::lock_guard closes(closes_mutex_);
    deferred_closes_.push_back(DeferredClose{fd, shadow});
}

uint64_t GuestSession::current_shadow() const {
    std::lock_guard lock(status_mutex_);
    return status_.shadows_created;
}

std::vector<SyscallBatch::Op> GuestSession::take_deferred_closes(size_t room) {
    uint64_t shadow = current_shadow();
    std::vector<SyscallBatch::Op> ops;
    std::lock_guard closes(closes_mutex_);
    while (!deferred_closes_.empty() && ops.size() < room) {
        DeferredClose c = deferred_closes_.back();
        deferred_closes_.pop_back();
        // An fd of a shadow replaced meanwhile is another process's number: dropped.
        if (c.shadow != shadow) continue;
        SyscallBatch::Op op;
        op.nr = x86abi::kClose;
        op.args[0] = SyscallBatch::imm(static_cast<uint64_t>(c.fd));
        ops.push_back(op);
    }
    return ops;
}

ErrorOr<BatchOutcome> GuestSession::run(const SyscallBatch& caller_batch,
                                        std::optional<uint64_t> on_shadow) {
    std::unique_lock lock(mutex_);
    if (state() != SessionState::kAttached) TRY(attach_locked());
    update_status([](SessionStatus& st) { ++st.batches; });
    for (int attempt = 0;; ++attempt) {
        // Before anything could stop or resume the VM (a trap batch, a new shadow).
        auto stopped = stopped_by_owner_locked();
        if (!stopped || *stopped) {
            update_status([](SessionStatus& st) { ++st.failures; });
            if (!stopped && is_transport_error(stopped.error())) fail_locked(stopped.error());
            return std::unexpected(stopped ? paused_error() : stopped.error());
        }
        // A shadow that could not be made a moment ago is not tried again at once: every
        // try stops the VM, and readers retrying in a loop would starve a booting guest.
        if (!engine_ && last_shadow_failure_ && Clock::now() < shadow_retry_after_) {
            update_status([](SessionStatus& st) { ++st.failures; });
            return std::unexpected(*last_shadow_failure_);
        }
        auto ready = ensure_shadow_locked();
        if (!ready) {
            last_shadow_failure_ = ready.error();
            shadow_retry_after_ = Clock::now() + kShadowRetryPause;
            update_status([](SessionStatus& st) { ++st.failures; });
            if (is_transport_error(ready.error())) {
                fail_locked(ready.error());
            } else if (guest_ && !guest_->running() && !paused_by_others()) {
                // No shadow came of it: the guest runs between requests all the same, or,
                // if something of ours could not be undone, the guardian restores it.
                if (log_ && !log_->current().nothing_to_undo()) {
                    fail_locked(ready.error());
                } else if (auto r = guest_->resume(); !r) {
                    fail_locked(r.error());
                }
            }
            return std::unexpected(ready.error());
        }
        last_shadow_failure_.reset();
        if (!stuck_shadows_.empty()) {
            end_stuck_shadows_locked();
            // Its checks may have cost the shadow (discarded on a doubt): get another.
            if (!engine_) {
                --attempt;
                continue;
            }
        }
        if (on_shadow && *on_shadow != current_shadow()) {
            return make_error(EBADF, "the guest fd belonged to a shadow that was replaced");
        }
        // Deferred closes ride along in front (so that the caller's ops see them done);
        // their results are dropped. Without any, the caller's batch runs as it is.
        auto closes = take_deferred_closes(
            SHADOW_MAX_OPS - std::min<size_t>(SHADOW_MAX_OPS, caller_batch.ops().size()));
        std::optional<SyscallBatch> with_closes;
        if (!closes.empty()) {
            with_closes = caller_batch;
            with_closes->prepend(closes);
        }
        const SyscallBatch& batch = with_closes ? *with_closes : caller_batch;
        auto out = run_in_engine_locked(batch);
        if (out) {
            out->results.erase(out->results.begin(),
                               out->results.begin() + static_cast<ptrdiff_t>(closes.size()));
            out->shadow = current_shadow();
            update_status([&](SessionStatus& st) { st.vm_cost = guest_->counters(); });
            return out;
        }
        // The closes did not run: keep them for the next batch of this shadow.
        if (shadow_) {
            for (const auto& op : closes)
                defer_close(static_cast<int>(op.args[0].value), current_shadow());
        }
        const Error& e = out.error();
        // A shadow that vanished before running anything (killed inside the guest) is
        // replaced once. One stuck inside the batch is not: the batch may have had effects.
        if (e.code() == ESRCH && attempt == 0) {
            LOG_WARN("%s; creating a new shadow", e.describe().c_str());
            continue;
        }
        update_status([](SessionStatus& st) { ++st.failures; });
        if (paused_by_others()) {
            // A VM its owner paused: left so.
        } else if (is_transport_error(e)) {
            fail_locked(e);
        } else if (guest_ && guest_->running() == false &&
                   (!shadow_ || shadow_->state() != ShadowProcess::State::kHeld)) {
            // Whatever happened to the shadow, the guest runs between requests.
            if (auto r = guest_->resume(); !r) fail_locked(r.error());
        }
        return std::unexpected(e);
    }
}

void GuestSession::wake_idle_work_locked() {
    idle_cv_.notify_all();
}

// The engine's idle work (parking a trap shadow after its linger, renewing a mailbox
// shadow's lease) runs here, under the session mutex like any guest access.
void GuestSession::idle_worker_main() {
    std::unique_lock lock(mutex_);
    while (!stopping_) {
        auto due = engine_ ? engine_->idle_due() : std::nullopt;
        if (!due) {
            idle_cv_.wait(lock);
            continue;
        }
        if (Clock::now() < *due) {
            idle_cv_.wait_until(lock, *due);
            continue;
        }
        if (auto r = engine_->idle_work(); !r) {
            LOG_WARN("%s: %s engine, between batches: %s", options_.gdb_endpoint.c_str(),
                     engine_->name(), r.error().describe().c_str());
            // A trap shadow that could not be parked leaves the VM stopped: give it up.
            if (!mailbox_) fail_locked(r.error());
        }
    }
}

ErrorOr<void> GuestSession::detach() {
    std::lock_guard lock(mutex_);
    return detach_locked();
}

ErrorOr<void> GuestSession::detach_locked() {
    std::optional<Error> first;
    if (guest_) (void)stopped_by_owner_locked();  // a late look: paused since the last batch?
    bool leave_paused = paused_by_others();
    if (leave_paused && shadow_) {
        // Ending the shadow through the stub would resume the VM: its lease ends it instead,
        // shortened now (a mailbox shadow's through guest RAM, a trap shadow's through the
        // stub, neither resuming the VM).
        if (!mailbox_ && guest_ && !guest_->running()) shadow_->end_in_stopped_vm();
        discard_shadow_locked("the VM is paused by someone else");
    }
    engine_.reset();
    mailbox_ = nullptr;
    if (shadow_) {
        if (auto r = shadow_->terminate(); !r) first = r.error();
        shadow_.reset();
    }
    if (guest_ && leave_paused) {
        // A detach command would resume the VM: only close the connection.
        guest_->abandon();
        guest_.reset();
        if (log_) log_->edit().connect_pause = 0;  // its owner's pause now, not ours
    }
    if (guest_) {
        if (log_ && !log_->current().nothing_to_undo()) {
            // Something could not be undone in-process: the guardian takes over.
            fail_locked(first.value_or(Error(EIO, "unclean detach")));
            return std::unexpected(first.value_or(Error(EIO, "unclean detach")));
        }
        if (auto r = guest_->detach(); !r && !first) first = r.error();
        guest_.reset();
    }
    if (log_) log_->commit();
    if (stub_opened_ && options_.stub.close) options_.stub.close();
    stub_opened_ = false;
    owner_view_.reset();  // its socket serves one client: free it for others
    release_lock_and_guardian_locked();
    update_status([](SessionStatus& st) {
        if (st.state != SessionState::kError) st.state = SessionState::kDetached;
        st.shadow_pid = 0;
        st.shadow_region = 0;
    });
    if (first) return std::unexpected(*first);
    return {};
}

void GuestSession::release_lock_and_guardian_locked() {
    log_.reset();
    // The guardian wakes when its link closes; it waits for the lock, sees a clean log
    // (or a dirty one after a failure) and acts accordingly.
    guardian_.reset();
    update_status([](SessionStatus& st) { st.guardian_pid = 0; });
    lock_fd_.reset();
}

void GuestSession::fail_locked(const Error& error) {
    LOG_ERROR("session %s: %s", options_.gdb_endpoint.c_str(), error.describe().c_str());
    update_status([&](SessionStatus& st) {
        st.state = SessionState::kError;
        st.error = error.describe();
        st.shadow_pid = 0;
        st.shadow_region = 0;
    });
    engine_.reset();
    mailbox_ = nullptr;
    if (shadow_) shadow_.reset();
    owner_view_.reset();
    if (guest_) {
        // A stop request of ours may still be on its way (QEMU not answering).
        if (!paused_by_others()) own_pause_possible_ = true;
        // A detach would resume a VM that someone else paused.
        if (log_ && log_->current().nothing_to_undo() && !paused_by_others()) {
            (void)guest_->detach();  // its note clears our connection's pause
        } else {
            guest_->abandon();
        }
        guest_.reset();
    }
    release_lock_and_guardian_locked();
}

}  // namespace cloudvmi
