#include "redirector/shadow/shadow_process.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "common/log.h"
#include "common/random.h"
#include "common/strings.h"
#include "redirector/shadow/batch_transfer.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"
#include "redirector/x86/page_walker.h"

extern "C" {
extern const uint8_t cloudvmi_shadow_begin[];
extern const uint8_t cloudvmi_shadow_child_entry[];
extern const uint8_t cloudvmi_shadow_park_loop[];
extern const uint8_t cloudvmi_shadow_sleep_syscall[];
extern const uint8_t cloudvmi_shadow_after_sleep[];
extern const uint8_t cloudvmi_shadow_run_posted[];
extern const uint8_t cloudvmi_shadow_run_batch[];
extern const uint8_t cloudvmi_shadow_batch_done[];
extern const uint8_t cloudvmi_shadow_exit[];
extern const uint8_t cloudvmi_shadow_end[];
}

namespace cloudvmi {

namespace {

using namespace x86abi;

uint64_t offset_of(const uint8_t* symbol) {
    return static_cast<uint64_t>(symbol - cloudvmi_shadow_begin);
}

// Where the shadow region goes in the hijacked process: below the usual mmap area and far
// above heaps, randomised so that two shadows (or a stale one) never collide.
uint64_t region_hint() {
    constexpr uint64_t kSlots =
        (SyscallInjector::kShadowBandEnd - SyscallInjector::kShadowBandStart) / SHADOW_REGION_SIZE;
    return SyscallInjector::kShadowBandStart + (random_u64() % kSlots) * SHADOW_REGION_SIZE;
}

constexpr char kShadowName[] = "cloudvmi-shadow";
static_assert(sizeof kShadowName <= CTRL_NAME_SIZE);

std::string as_text(const std::vector<uint8_t>& bytes) {
    return std::string(bytes.begin(), bytes.end());
}

}  // namespace

std::span<const uint8_t> ShadowCode::bytes() {
    return {cloudvmi_shadow_begin,
            static_cast<size_t>(cloudvmi_shadow_end - cloudvmi_shadow_begin)};
}
uint64_t ShadowCode::child_entry() {
    return offset_of(cloudvmi_shadow_child_entry);
}
uint64_t ShadowCode::park_loop() {
    return offset_of(cloudvmi_shadow_park_loop);
}
uint64_t ShadowCode::sleep_syscall() {
    return offset_of(cloudvmi_shadow_sleep_syscall);
}
uint64_t ShadowCode::after_sleep() {
    return offset_of(cloudvmi_shadow_after_sleep);
}
uint64_t ShadowCode::run_posted() {
    return offset_of(cloudvmi_shadow_run_posted);
}
uint64_t ShadowCode::run_batch() {
    return offset_of(cloudvmi_shadow_run_batch);
}
uint64_t ShadowCode::batch_done() {
    return offset_of(cloudvmi_shadow_batch_done);
}
uint64_t ShadowCode::exit() {
    return offset_of(cloudvmi_shadow_exit);
}

ShadowProcess::ShadowProcess(GuestAccess& guest, RecoveryLog& log, ShadowOptions options)
    : guest_(guest), log_(log), options_(options), traps_(guest, log), generation_(random_u64()) {}

ShadowProcess::~ShadowProcess() {
    if (state_ == State::kHeld) {
        if (auto r = park(); !r) {
            LOG_WARN("could not park the shadow on shutdown: %s", r.error().describe().c_str());
        }
    } else if (!traps_.empty() && !guest_.running()) {
        (void)traps_.disarm_all();
    }
}

uint64_t ShadowProcess::lease_iterations() const {
    uint64_t per_iteration_ms = std::max<uint64_t>(options_.sleep_max_ns / 1'000'000, 1);
    return std::max<uint64_t>(static_cast<uint64_t>(options_.lease.count()) / per_iteration_ms,
                              100);
}

std::vector<uint8_t> ShadowProcess::initial_control_block() const {
    std::vector<uint8_t> ctrl(CTRL_SCRATCH, 0);
    auto put = [&](size_t off, uint64_t v) { std::memcpy(ctrl.data() + off, &v, 8); };
    put(CTRL_MAGIC, SHADOW_MAGIC);
    put(CTRL_LEASE, lease_iterations());
    put(CTRL_SLEEP_CUR, options_.sleep_min_ns);
    put(CTRL_SLEEP_MIN, options_.sleep_min_ns);
    put(CTRL_SLEEP_MAX, std::min<uint64_t>(options_.sleep_max_ns, 999'999'999));
    std::memcpy(ctrl.data() + CTRL_NAME, kShadowName, sizeof kShadowName);
    put(CTRL_SIGSET, ~uint64_t{0});
    put(CTRL_GENERATION, generation_);
    put(CTRL_CANCEL_SEQ, ~uint64_t{0});  // no batch withdrawn (sequence numbers start at 1)
    return ctrl;
}

void ShadowProcess::journal() {
    auto& rec = log_.edit();
    switch (state_) {
        case State::kHeld:
            rec.shadow_phase = in_flight_ ? ShadowPhase::kBatchInFlight : ShadowPhase::kHeld;
            break;
        case State::kParked:
            rec.shadow_phase = ShadowPhase::kParked;
            break;
        case State::kLost:
        case State::kGone:
            rec.shadow_phase = ShadowPhase::kNone;
            break;
    }
    rec.shadow_pid = pid_;
    rec.shadow_cr3 = cr3_;
    rec.shadow_region = region_;
    rec.shadow_vcpu = vcpu_;
    log_.commit();
}

ErrorOr<std::unique_ptr<ShadowProcess>> ShadowProcess::create(GuestAccess& guest,
                                                              const KernelEntryPoints& kernel,
                                                              RecoveryLog& log,
                                                              ShadowOptions options) {
    auto start = Clock::now();
    std::unique_ptr<ShadowProcess> shadow(new ShadowProcess(guest, log, options));
    shadow->deadline_ = Deadline::after(options.attach_timeout);
    std::set<uint64_t> skip;
    std::optional<Error> last;
    for (int attempt = 1; attempt <= options.max_bootstrap_attempts; ++attempt) {
        bool retry = false;
        auto r = shadow->bootstrap_once(kernel, skip, retry);
        if (r) {
            shadow->bootstrap_.attempts = attempt;
            shadow->bootstrap_.total_ms = elapsed_ms(start);
            shadow->deadline_ = Deadline::never();
            LOG_INFO("shadow process %lld ready in %.1f ms (region %s)",
                     static_cast<long long>(shadow->pid_), shadow->bootstrap_.total_ms,
                     hex_u64(shadow->region_).c_str());
            return shadow;
        }
        last = r.error();
        if (!retry || shadow->deadline_.expired()) break;
        LOG_INFO("shadow bootstrap attempt %d failed (%s); trying another thread", attempt,
                 r.error().describe().c_str());
    }
    return std::unexpected(last->with_context("creating the shadow process"));
}

void ShadowProcess::progress(const std::string& step) {
    LOG_DEBUG("bootstrap: %s", step.c_str());
    if (options_.on_progress) options_.on_progress(step);
}

ErrorOr<void> ShadowProcess::bootstrap_once(const KernelEntryPoints& kernel,
                                            std::set<uint64_t>& skip, bool& retry_other_thread) {
    // Nothing of a previous attempt's shadow may leak into this one's record.
    state_ = State::kGone;
    pid_ = 0;
    cr3_ = 0;
    region_ = 0;
    parent_space_ = 0;
    helper_cloned_ = false;
    foreign_parent_ = false;
    mapped_size_ = SHADOW_PARENT_MAP_SIZE;
    SyscallInjector inj(guest_, kernel, log_, deadline_);
    progress("waiting for a root thread without seccomp to return from a syscall");
    auto held = inj.hijack(skip, foreign_pids_);
    bootstrap_.injector = inj.stats();
    TRY(held);
    bootstrap_.hijack_ms = inj.stats().hijack_ms;
    parent_space_ = SyscallInjector::address_space(inj.cr3());
    retry_other_thread = true;

    std::string refusal;
    auto started = start_in_hijacked_thread(inj, refusal);
    if (started) started = inj.release();
    bootstrap_.injector = inj.stats();
    if (started && !refusal.empty()) {
        LOG_INFO("not borrowing the thread with cr3 %s: %s", hex_u64(inj.cr3()).c_str(),
                 refusal.c_str());
        skip.insert(parent_space_);
        // Pids count per namespace: 1 is the VM's init as well (and every daemon's parent).
        if (foreign_parent_ && inj.pid() != 1) foreign_pids_.insert(inj.pid());
        return make_error(EAGAIN, "the borrowed process is unsuitable: " + refusal);
    }
    if (started) {
        progress("catching the new shadow process");
        auto finished = catch_and_configure();
        if (finished) {
            retry_other_thread = false;
            return {};
        }
        started = std::unexpected(finished.error());
    }
    const Error& e = started.error();
    if (is_transport_error(e)) {
        // The guest's state is unknown: leave everything to the log and the guardian.
        retry_other_thread = false;
        return std::unexpected(e);
    }
    // Undo in order: P's leftovers while it is still held, then P, then a shadow that may
    // exist (P first: ending the shadow lets the guest run). Cleanup shares a short grace
    // beyond the attach deadline, all steps together.
    Deadline cleanup = Deadline::after(SyscallInjector::kCleanupGrace);
    inj.set_deadline(cleanup);
    undo_partial_bootstrap(inj);
    if (auto released = inj.release(); !released) {
        // A thread that cannot be given back ends the bootstrap: another hijack would
        // overwrite its record, and only the guardian may take over from here.
        retry_other_thread = false;
        return std::unexpected(released.error());
    }
    Deadline saved = deadline_;
    deadline_ = cleanup;
    if (state_ == State::kHeld || state_ == State::kParked) {
        (void)terminate();  // caught but unusable (failed configuration)
    } else if (helper_cloned_) {
        end_stray_shadow();  // a helper ran: a shadow may exist, never caught
    } else {
        state_ = State::kGone;  // no helper ran: nothing was started
    }
    deadline_ = saved;
    if (state_ != State::kGone && state_ != State::kLost) {
        // It could not be ended: the log keeps naming it, for the guardian.
        retry_other_thread = false;
        return std::unexpected(e);
    }
    if (guest_.running()) TRY(guest_.interrupt(cleanup));
    log_.edit().shadow_phase = ShadowPhase::kNone;
    log_.commit();
    skip.insert(parent_space_);
    if (log_.current().parent_region != 0) {
        LOG_WARN("a %u KiB region stays mapped in a guest process (cr3 %s)",
                 SHADOW_PARENT_MAP_SIZE / 1024, hex_u64(inj.cr3()).c_str());
        log_.edit().parent_region = 0;
        log_.commit();
    }
    return std::unexpected(e);
}

ErrorOr<uint64_t> ShadowProcess::map_parent_region(SyscallInjector& inj, std::string& refusal) {
    progress("mapping the shadow's first pages in the borrowed process");
    uint64_t region = 0;
    for (int i = 0; i < 4 && region == 0; ++i) {
        uint64_t hint = region_hint();
        log_.edit().parent_region = hint;  // write-ahead: mmap may succeed and we die
        log_.commit();
        // Writable, not executable: the code page becomes read+execute once written, which
        // also suits the kernel's memory-deny-write-execute where it is on.
        uint64_t r =
            TRY(inj.syscall(kMmap, {hint, SHADOW_PARENT_MAP_SIZE, kProtRead | kProtWrite,
                                    kMapShared | kMapAnonymous | kMapPopulate | kMapFixedNoreplace,
                                    ~uint64_t{0}, 0}));
        if (is_error_result(r)) {
            log_.edit().parent_region = 0;
            log_.commit();
            if (static_cast<int>(-as_signed(r)) == EEXIST) continue;
            return std::unexpected(
                Error::guest(static_cast<int>(-as_signed(r)),
                             "mmap of the shadow region in the borrowed thread"));
        }
        log_.edit().parent_region = r;
        log_.commit();
        if (r != hint) {
            return make_error(EPROTO, "guest returned an implausible mmap address " + hex_u64(r));
        }
        region = r;
    }
    if (region == 0) return make_error(EEXIST, "no free address for the shadow region");

    auto code = ShadowCode::bytes();
    TRY(inj.write_memory(region, code));
    TRY(inj.write_memory(region + SHADOW_CTRL_OFFSET, initial_control_block()));
    std::vector<uint8_t> check(code.size());
    TRY(inj.read_memory(region, check));
    if (!std::equal(check.begin(), check.end(), code.begin())) {
        return make_error(EIO, "shadow code did not reach the guest intact");
    }
    uint64_t prot = TRY(inj.syscall(kMprotect, {region, 0x1000, kProtRead | kProtExec}));
    if (is_error_result(prot)) {
        refusal = strformat("it may not make memory executable (mprotect: %s)",
                            std::strerror(static_cast<int>(-as_signed(prot))));
        TRY(unmap_parent_region(inj, log_));
        return uint64_t{0};
    }
    return region;
}

ErrorOr<void> unmap_parent_region(SyscallInjector& inj, RecoveryLog& log) {
    uint64_t region = log.current().parent_region;
    if (region == 0) return {};
    // Back to the thread's own return address: the region's landing is about to vanish.
    TRY(inj.set_landing(inj.original_regs().rcx));
    uint64_t unmapped = TRY(inj.syscall(kMunmap, {region, SHADOW_PARENT_MAP_SIZE}));
    if (is_error_result(unmapped)) {
        return std::unexpected(Error::guest(static_cast<int>(-as_signed(unmapped)),
                                            "munmap of the shadow region in the borrowed process"));
    }
    log.edit().parent_region = 0;
    log.commit();
    return {};
}

ErrorOr<std::string> ShadowProcess::vet_parent(SyscallInjector& inj, uint64_t region) {
    progress("checking the borrowed process's namespaces");
    // kthreadd (pid 2) is in the initial namespaces whatever the candidate believes its
    // own /proc/1 to be; a candidate in a container cannot even name it.
    SyscallBatch b;
    auto pid = b.add(kGetpid, {});
    auto readlink = [&](const char* path) {
        auto p = b.input_string(path);
        auto out = b.output(128);
        auto op = b.add(kReadlinkat, {SyscallBatch::imm_signed(kAtFdcwd), SyscallBatch::buf(p),
                                      SyscallBatch::buf(out), SyscallBatch::imm(127)});
        b.filled_by(out, op, SyscallBatch::Fill::kResultBytes);
        return std::make_pair(op, out);
    };
    const char* kinds[] = {"mnt", "pid", "user"};
    std::vector<std::pair<std::pair<size_t, size_t>, std::pair<size_t, size_t>>> ns;
    for (const char* kind : kinds) {
        auto own = readlink(strformat("/proc/self/ns/%s", kind).c_str());
        auto init = readlink(strformat("/proc/2/ns/%s", kind).c_str());
        ns.emplace_back(own, init);
    }
    // readlink of /proc/self/root says "/" inside a chroot (paths are shown relative to the
    // reader's root): compare the root directories themselves.
    auto stat_of = [&](const char* path) {
        auto p = b.input_string(path);
        auto out = b.output(sizeof(Stat));
        auto op = b.add(kNewfstatat, {SyscallBatch::imm_signed(kAtFdcwd), SyscallBatch::buf(p),
                                      SyscallBatch::buf(out), SyscallBatch::imm(0)});
        b.filled_by(out, op, SyscallBatch::Fill::kWhole);
        return std::make_pair(op, out);
    };
    auto own_root = stat_of("/");
    auto init_root = stat_of("/proc/2/root/");
    auto exe = readlink("/proc/self/exe");
    auto out = TRY(run_batch_in(inj, region, b));

    std::string name = as_text(out.bytes(exe.second));
    std::string who = strformat("pid %lld (%s)", static_cast<long long>(out.result(pid)),
                                printable(out.failed(exe.first) ? "?" : name).c_str());
    for (size_t i = 0; i < ns.size(); ++i) {
        auto own = as_text(out.bytes(ns[i].first.second));
        auto init = as_text(out.bytes(ns[i].second.second));
        if (out.failed(ns[i].first.first) || out.failed(ns[i].second.first) || own != init) {
            foreign_parent_ = true;
            return strformat("%s is in %s namespace '%s', not the initial '%s'", who.c_str(),
                             kinds[i], printable(own).c_str(), printable(init).c_str());
        }
    }
    auto same_root = [&]() {
        if (out.failed(own_root.first) || out.failed(init_root.first)) return false;
        auto a = out.bytes(own_root.second);
        auto c = out.bytes(init_root.second);
        if (a.size() < sizeof(Stat) || c.size() < sizeof(Stat)) return false;
        Stat sa, sc;
        std::memcpy(&sa, a.data(), sizeof sa);
        std::memcpy(&sc, c.data(), sizeof sc);
        return sa.st_dev == sc.st_dev && sa.st_ino == sc.st_ino;
    };
    if (!same_root()) {
        foreign_parent_ = true;
        return strformat("%s has another root directory than init (chroot)", who.c_str());
    }
    bootstrap_.borrowed = who;
    LOG_INFO("borrowing %s for the bootstrap", who.c_str());
    return std::string();
}

ErrorOr<void> ShadowProcess::start_in_hijacked_thread(SyscallInjector& inj, std::string& refusal) {
    uint64_t region = TRY(map_parent_region(inj, refusal));
    if (region == 0) return {};
    refusal = TRY(vet_parent(inj, region));
    if (!refusal.empty()) return unmap_parent_region(inj, log_);

    region_ = region;
    log_.edit().shadow_phase = ShadowPhase::kStarting;
    log_.edit().shadow_region = region;
    log_.edit().shadow_pid = 0;
    log_.edit().shadow_cr3 = 0;
    log_.commit();

    progress("starting the shadow process");
    // The parent comes back right after the region's `syscall`, where the child starts:
    // the child has another address space, so the landing tells them apart.
    // exit_signal 0: the helper's exit must not send SIGCHLD to P, whose handler would run
    // with our registers (wait4 with __WALL still reaps it).
    TRY(inj.set_landing(region + ShadowCode::child_entry()));
    uint64_t child = TRY(inj.syscall(kClone, {0, 0, 0, 0, 0}));
    if (is_error_result(child)) {
        return std::unexpected(
            Error::guest(static_cast<int>(-as_signed(child)), "clone in the borrowed thread"));
    }
    helper_cloned_ = true;
    // Until P has reaped it, the helper would stay a zombie if we died.
    log_.edit().helper_pid = static_cast<int64_t>(child);
    log_.commit();
    TRY(reap_helper_and_unmap(inj));
    if (pid_ <= 0) return make_error(EPROTO, "the helper did not start the shadow");
    log_.edit().shadow_pid = pid_;
    log_.commit();
    return {};
}

bool helper_clone_in_flight(const RecoveryRecord& record) {
    return record.parent_region != 0 &&
           record.landing == record.parent_region + ShadowCode::child_entry() &&
           record.helper_pid == 0 && record.shadow_phase == ShadowPhase::kStarting;
}

std::optional<int64_t> helper_cloned_just_now(const SyscallInjector& inj,
                                              const RecoveryRecord& record) {
    if (!inj.hijacked() || !helper_clone_in_flight(record) || is_error_result(inj.last_result())) {
        return std::nullopt;
    }
    return static_cast<int64_t>(inj.last_result());
}

ErrorOr<void> ShadowProcess::reap_helper_and_unmap(SyscallInjector& inj) {
    uint64_t region = log_.current().parent_region;
    if (int64_t helper = log_.current().helper_pid; helper > 0) {
        uint64_t status_at = region != 0 ? region + SHADOW_CTRL_OFFSET + CTRL_WAIT_STATUS : 0;
        uint64_t waited =
            TRY(inj.syscall(kWait4, {static_cast<uint64_t>(helper), status_at, kWall, 0}));
        // ECHILD: the process ignores SIGCHLD and the kernel reaped the helper itself.
        if (waited == static_cast<uint64_t>(helper) || as_signed(waited) == -ECHILD) {
            log_.edit().helper_pid = 0;
            log_.commit();
        } else {
            LOG_WARN("wait4 for the helper returned %lld",
                     static_cast<long long>(as_signed(waited)));
        }
    }
    if (region == 0) return {};
    // The helper reported the shadow's pid (or its clone's -errno) in the shared page.
    int64_t s2 = 0;
    TRY(inj.read_memory(region + SHADOW_CTRL_OFFSET + CTRL_S2_PID,
                        std::span(reinterpret_cast<uint8_t*>(&s2), 8)));
    if (s2 > 0 && s2 <= (1 << 22)) pid_ = s2;
    TRY(unmap_parent_region(inj, log_));
    if (s2 <= 0) {
        return std::unexpected(Error(
            s2 < 0 && s2 > -4096 ? static_cast<int>(-s2) : EPROTO,
            strformat("the helper could not clone the shadow (%lld)", static_cast<long long>(s2))));
    }
    return {};
}

ErrorOr<void> ShadowProcess::catch_and_configure() {
    TRY(catch_newborn());
    progress("configuring the shadow process");
    return configure();
}

void ShadowProcess::undo_partial_bootstrap(SyscallInjector& inj) {
    if (inj.in_flight()) {
        if (auto r = inj.finish(); !r) return;
        if (auto helper = helper_cloned_just_now(inj, log_.current())) {
            helper_cloned_ = true;
            log_.edit().helper_pid = *helper;
            log_.commit();
        }
    }
    if (!inj.hijacked()) return;
    if (auto r = reap_helper_and_unmap(inj); !r) {
        LOG_DEBUG("cleaning up the failed bootstrap: %s", r.error().describe().c_str());
    }
}

void ShadowProcess::end_stray_shadow() {
    cr3_ = 0;
    state_ = State::kParked;
    if (auto r = terminate(); !r) {
        LOG_WARN("a half-started shadow could not be ended (%s); its lease will end it",
                 r.error().describe().c_str());
    }
    if (guest_.running()) (void)guest_.interrupt(op_deadline(options_.acquire_timeout));
}

ErrorOr<void> ShadowProcess::catch_newborn() {
    auto start = Clock::now();
    uint64_t at = region_ + ShadowCode::after_sleep();
    TRY(traps_.arm(at));
    auto vcpu = run_until_shadow_at(at, deadline_, true, parent_space_);
    if (!vcpu && is_transport_error(vcpu.error())) return std::unexpected(vcpu.error());
    if (!vcpu) {
        // Left to the caller's cleanup, which tries once more to catch and end it.
        (void)traps_.disarm_all();
        return std::unexpected(vcpu.error().with_context(
            strformat("catching the new shadow process %lld", static_cast<long long>(pid_))));
    }
    auto snap = TRY(guest_.snapshot(*vcpu));
    cr3_ = snap.state.sregs.cr3;
    vcpu_ = *vcpu;
    state_ = State::kHeld;
    bootstrap_.first_catch_ms = elapsed_ms(start);
    journal();
    return {};
}

ErrorOr<VcpuId> ShadowProcess::run_until_shadow_at(uint64_t addr, Deadline deadline, bool any_space,
                                                   uint64_t exclude_space) {
    TRY(guest_.resume());
    uint64_t own_space = SyscallInjector::address_space(cr3_);
    while (true) {
        auto ev = guest_.wait_for_stop(deadline);
        if (!ev) {
            if (guest_.running()) TRY(guest_.interrupt(op_deadline(options_.acquire_timeout)));
            return std::unexpected(ev.error());
        }
        auto snap = TRY(guest_.snapshot(ev->vcpu));
        uint64_t rip = snap.state.regs.rip;
        uint64_t space = SyscallInjector::address_space(snap.state.sregs.cr3);
        if (rip == addr) {
            bool ours = any_space ? space != exclude_space : space == own_space;
            if (ours) return ev->vcpu;
        }
        if (traps_.armed(rip)) {
            // Another process executing the same address, or our shadow at another of our
            // breakpoints on its way: let it pass.
            TRY(traps_.step_over(ev->vcpu, rip, op_deadline(options_.acquire_timeout)));
        } else {
            // Not ours: a single step gets past a breakpoint that is not ours too, where
            // resuming would stop on it again at once.
            LOG_DEBUG("vCPU %d stopped at %s (cr3 %s), not at one of our breakpoints", ev->vcpu,
                      hex_u64(rip).c_str(), hex_u64(snap.state.sregs.cr3).c_str());
            TRY(guest_.step(ev->vcpu, op_deadline(options_.acquire_timeout)));
        }
        TRY(guest_.resume());
    }
}

ErrorOr<void> ShadowProcess::set_rip(uint64_t address) {
    auto snap = TRY(guest_.snapshot(vcpu_));
    kvm_regs regs = snap.state.regs;
    regs.rip = address;
    return guest_.write_regs(vcpu_, regs);
}

ErrorOr<void> ShadowProcess::configure() {
    uint64_t name_page = 0;
    {
        // The rest of the region is the shadow's own memory, mapped by itself.
        SyscallBatch m;
        uint64_t rest = region_ + SHADOW_PARENT_MAP_SIZE;
        auto grown = m.add(kMmap, {SyscallBatch::imm(rest),
                                   SyscallBatch::imm(SHADOW_REGION_SIZE - SHADOW_PARENT_MAP_SIZE),
                                   SyscallBatch::imm(kProtRead | kProtWrite),
                                   SyscallBatch::imm(kMapPrivate | kMapAnonymous | kMapPopulate |
                                                     kMapFixedNoreplace),
                                   SyscallBatch::imm(~uint64_t{0}), SyscallBatch::imm(0)});
        // The kernel reads /proc/PID/cmdline only from private anonymous memory (FOLL_ANON),
        // and the first pages are shared: the name gets a private page of its own.
        auto op = m.add(kMmap, {SyscallBatch::imm(0), SyscallBatch::imm(4096),
                                SyscallBatch::imm(kProtRead | kProtWrite),
                                SyscallBatch::imm(kMapPrivate | kMapAnonymous | kMapPopulate),
                                SyscallBatch::imm(~uint64_t{0}), SyscallBatch::imm(0)});
        auto out = TRY(execute(m));
        if (out.failed(grown) || static_cast<uint64_t>(out.result(grown)) != rest) {
            return make_error(out.failed(grown) ? out.error_of(grown) : EPROTO,
                              "mapping the rest of the shadow region");
        }
        mapped_size_ = SHADOW_REGION_SIZE;
        if (!out.failed(op)) {
            name_page = static_cast<uint64_t>(out.result(op));
            if ((name_page & 0xfff) != 0 || name_page >= 0x00007ffffffff000ULL) {
                return make_error(EPROTO, "implausible mmap result in the shadow");
            }
            TRY(guest_.write_virtual(
                vcpu_, name_page,
                std::span(reinterpret_cast<const uint8_t*>(kShadowName), sizeof kShadowName)));
        }
    }
    SyscallBatch b;
    uint64_t ctrl = region_ + SHADOW_CTRL_OFFSET;
    uint64_t name_at = name_page != 0 ? name_page : ctrl + CTRL_NAME;
    auto pid = b.add(kGetpid, {});
    auto sid = b.add(kSetsid, {});
    auto root = b.input_string("/");
    auto cd = b.add(kChdir, {SyscallBatch::buf(root)});
    auto closed = b.add(
        kCloseRange, {SyscallBatch::imm(0), SyscallBatch::imm(0xffffffffu), SyscallBatch::imm(0)});
    auto name = b.add(kPrctl, {SyscallBatch::imm(kPrSetName), SyscallBatch::imm(name_at)});
    auto args_start =
        b.add(kPrctl, {SyscallBatch::imm(kPrSetMm), SyscallBatch::imm(kPrSetMmArgStart),
                       SyscallBatch::imm(name_at), SyscallBatch::imm(0), SyscallBatch::imm(0)});
    auto args_end = b.add(kPrctl, {SyscallBatch::imm(kPrSetMm), SyscallBatch::imm(kPrSetMmArgEnd),
                                   SyscallBatch::imm(name_at + sizeof kShadowName),
                                   SyscallBatch::imm(0), SyscallBatch::imm(0)});
    auto masked = b.add(kRtSigprocmask,
                        {SyscallBatch::imm(kSigSetmask), SyscallBatch::imm(ctrl + CTRL_SIGSET),
                         SyscallBatch::imm(0), SyscallBatch::imm(8)});
    auto locked =
        b.add(kMlock, {SyscallBatch::imm(region_), SyscallBatch::imm(SHADOW_REGION_SIZE)});
    b.add(kUmask, {SyscallBatch::imm(022)});
    auto out = TRY(execute(b));

    if (out.result(pid) != pid_) {
        return make_error(EPROTO, strformat("the caught process reports pid %lld, expected the "
                                            "shadow %lld",
                                            static_cast<long long>(out.result(pid)),
                                            static_cast<long long>(pid_)));
    }
    if (out.failed(sid)) LOG_WARN("shadow setsid failed: %s", std::strerror(out.error_of(sid)));
    if (out.failed(cd)) LOG_WARN("shadow chdir / failed: %s", std::strerror(out.error_of(cd)));
    if (out.failed(closed)) {
        // Kernels before 5.9 lack close_range: close the usual range one by one.
        SyscallBatch c;
        for (int fd = 0; fd < 192; ++fd)
            c.add(kClose, {SyscallBatch::imm(static_cast<uint64_t>(fd))});
        TRY(execute(c));
    }
    if (out.failed(name))
        LOG_WARN("shadow PR_SET_NAME failed: %s", std::strerror(out.error_of(name)));
    if (out.failed(args_start) || out.failed(args_end)) {
        // The kernel wants arg_start <= arg_end at every step: try the other order.
        SyscallBatch m;
        m.add(kPrctl, {SyscallBatch::imm(kPrSetMm), SyscallBatch::imm(kPrSetMmArgEnd),
                       SyscallBatch::imm(name_at + sizeof kShadowName), SyscallBatch::imm(0),
                       SyscallBatch::imm(0)});
        m.add(kPrctl, {SyscallBatch::imm(kPrSetMm), SyscallBatch::imm(kPrSetMmArgStart),
                       SyscallBatch::imm(name_at), SyscallBatch::imm(0), SyscallBatch::imm(0)});
        auto retry = TRY(execute(m));
        if (retry.failed(0) || retry.failed(1)) {
            LOG_INFO("shadow cmdline not renamed (PR_SET_MM: %s); ps shows the parent's",
                     std::strerror(retry.error_of(retry.failed(0) ? 0 : 1)));
        }
    }
    if (out.failed(masked)) {
        return make_error(out.error_of(masked), "blocking signals in the shadow");
    }
    if (out.failed(locked)) {
        LOG_INFO("shadow region not locked in memory: %s", std::strerror(out.error_of(locked)));
    }
    return {};
}

std::unique_ptr<ShadowProcess> ShadowProcess::adopt(GuestAccess& guest, RecoveryLog& log,
                                                    const RecoveryRecord& record,
                                                    ShadowOptions options) {
    std::unique_ptr<ShadowProcess> shadow(new ShadowProcess(guest, log, options));
    shadow->pid_ = record.shadow_pid;
    shadow->region_ = record.shadow_region;
    shadow->cr3_ = record.shadow_cr3;
    shadow->vcpu_ = record.shadow_vcpu;
    shadow->parent_space_ = SyscallInjector::address_space(record.thread_cr3);
    shadow->state_ = State::kParked;
    return shadow;
}

ErrorOr<void> ShadowProcess::acquire() {
    auto start = Clock::now();
    if (guest_.running()) TRY(guest_.interrupt(op_deadline(options_.acquire_timeout)));
    uint64_t at = region_ + ShadowCode::after_sleep();
    TRY(traps_.arm(at));
    bool newborn = cr3_ == 0;
    auto vcpu =
        run_until_shadow_at(at, op_deadline(options_.acquire_timeout), newborn, parent_space_);
    if (!vcpu && is_transport_error(vcpu.error())) return std::unexpected(vcpu.error());
    if (!vcpu && vcpu.error().code() != ETIMEDOUT) {
        (void)traps_.disarm_all();
        return std::unexpected(vcpu.error());  // still parked somewhere in its loop
    }
    if (!vcpu) {
        (void)traps_.disarm_all();
        poison_lease();
        state_ = State::kLost;
        journal();
        if (vcpu.error().code() == ETIMEDOUT) {
            return make_error(ESRCH,
                              strformat("the shadow process %lld did not come back within "
                                        "%lld ms (killed inside the guest?)",
                                        static_cast<long long>(pid_),
                                        static_cast<long long>(options_.acquire_timeout.count())));
        }
        return std::unexpected(vcpu.error());
    }
    vcpu_ = *vcpu;
    if (newborn) cr3_ = TRY(guest_.snapshot(vcpu_)).state.sregs.cr3;
    state_ = State::kHeld;
    last_acquire_ms_ = elapsed_ms(start);
    journal();
    return {};
}

ErrorOr<BatchOutcome> ShadowProcess::run_batch_in(SyscallInjector& inj, uint64_t region,
                                                  const SyscallBatch& batch) {
    TRY(batch.validate(SHADOW_MAX_OPS, SHADOW_PARENT_MAP_SIZE - SHADOW_DATA_OFFSET));
    auto enc = TRY(post_batch(batch, region, [&](uint64_t va, std::span<const uint8_t> d) {
        return inj.write_memory(va, d);
    }));
    TRY(inj.run_code(region + ShadowCode::run_batch(), region + ShadowCode::batch_done()));
    return collect_outcome(batch, enc, region, [&](uint64_t va, std::span<uint8_t> d) {
        return inj.read_memory(va, d);
    });
}

ErrorOr<BatchOutcome> ShadowProcess::execute(const SyscallBatch& batch) {
    TRY(batch.validate(SHADOW_MAX_OPS, mapped_size_ - SHADOW_DATA_OFFSET));
    if (state_ == State::kLost || state_ == State::kGone) {
        return make_error(ESRCH, "the shadow process is gone");
    }
    if (state_ == State::kParked) TRY(acquire());

    auto enc = TRY(post_batch(batch, region_, [&](uint64_t va, std::span<const uint8_t> d) {
        return guest_.write_virtual(vcpu_, va, d);
    }));
    uint64_t done_at = region_ + ShadowCode::batch_done();
    TRY(traps_.arm(done_at));
    TRY(set_rip(region_ + ShadowCode::run_batch()));
    in_flight_ = true;
    journal();
    auto vcpu = run_until_shadow_at(done_at, op_deadline(options_.batch_timeout), false, 0);
    if (!vcpu && is_transport_error(vcpu.error())) return std::unexpected(vcpu.error());
    if (!vcpu && vcpu.error().code() != ETIMEDOUT) {
        // Somewhere between run_batch and its loop: catch it again before the next use
        // rather than guess where it stands.
        (void)traps_.disarm_all();
        in_flight_ = false;
        state_ = State::kParked;
        journal();
        return std::unexpected(vcpu.error());
    }
    if (!vcpu) {
        // The shadow is stuck in a syscall (a blocking read, say). It cannot be interrupted
        // from outside; make sure it leaves once it gets out, and start afresh next time.
        (void)traps_.disarm_all();
        poison_lease();
        in_flight_ = false;
        state_ = State::kLost;
        journal();
        if (vcpu.error().code() == ETIMEDOUT) {
            return make_error(ETIMEDOUT,
                              strformat("guest syscalls did not complete within %lld ms "
                                        "(blocked inside the guest?)",
                                        static_cast<long long>(options_.batch_timeout.count())));
        }
        return std::unexpected(vcpu.error());
    }
    vcpu_ = *vcpu;
    in_flight_ = false;
    journal();

    return collect_outcome(batch, enc, region_, [&](uint64_t va, std::span<uint8_t> d) {
        return guest_.read_virtual(vcpu_, va, d);
    });
}

ErrorOr<void> ShadowProcess::park() {
    if (state_ == State::kParked) return {};
    if (state_ != State::kHeld) return make_error(ESRCH, "the shadow process is gone");
    uint64_t fields[4] = {lease_iterations(), 0, 0, options_.sleep_min_ns};
    static_assert(CTRL_REQ_SEQ == CTRL_LEASE + 8 && CTRL_DONE_SEQ == CTRL_LEASE + 16 &&
                  CTRL_SLEEP_CUR == CTRL_LEASE + 24);
    TRY(guest_.write_virtual(vcpu_, region_ + SHADOW_CTRL_OFFSET + CTRL_LEASE,
                             std::span(reinterpret_cast<const uint8_t*>(fields), sizeof fields)));
    TRY(set_rip(region_ + ShadowCode::park_loop()));
    TRY(traps_.disarm_all());
    state_ = State::kParked;
    journal();
    return guest_.resume();
}

ErrorOr<void> ShadowProcess::terminate() {
    if (state_ == State::kGone) return {};
    // A shadow that does not come back is given up (kLost, lease shortened) by acquire();
    // after a transport error its state is unknown and the log keeps naming it.
    if (state_ == State::kParked) TRY(acquire());
    if (state_ == State::kLost) {
        state_ = State::kGone;
        journal();
        return {};
    }
    auto told = set_rip(region_ + ShadowCode::exit());
    if (!told && !is_transport_error(told.error())) told = set_rip(region_ + ShadowCode::exit());
    if (!told) return told;
    // From here the shadow exits as soon as it runs; breakpoints that cannot be removed
    // stay known (and logged) until a detach removes them all.
    state_ = State::kGone;
    journal();
    LOG_INFO("shadow process %lld told to exit", static_cast<long long>(pid_));
    auto disarmed = traps_.disarm_all();
    auto resumed = guest_.resume();
    if (!disarmed) return disarmed;
    return resumed;
}

void ShadowProcess::give_up_to_lease() {
    if (state_ == State::kGone || state_ == State::kLost) return;
    state_ = State::kLost;
    journal();
}

void ShadowProcess::end_in_stopped_vm() {
    if (state_ == State::kGone || state_ == State::kLost) return;
    if (!guest_.running()) poison_lease();
    state_ = State::kLost;
    journal();
}

void ShadowProcess::poison_lease() {
    if (cr3_ == 0 || region_ == 0) return;
    if (guest_.running()) {
        if (!guest_.interrupt(op_deadline(options_.acquire_timeout))) return;
    }
    PhysicalReader read = [this](uint64_t pa, std::span<uint8_t> out) {
        return guest_.read_physical(pa, out);
    };
    bool la57 = false;
    if (auto vcpus = guest_.vcpus(); vcpus && !vcpus->empty()) {
        if (auto snap = guest_.snapshot(vcpus->front()))
            la57 = (snap->state.sregs.cr4 & kCr4La57) != 0;
    }
    auto t = translate_virtual(read, cr3_, region_ + SHADOW_CTRL_OFFSET, la57);
    if (!t) {
        LOG_WARN("cannot reach the lost shadow's lease: %s", t.error().describe().c_str());
        return;
    }
    // The process may be gone and its page tables and pages reused: write only into a
    // page that still holds this shadow's control block (magic and random generation).
    uint64_t magic = 0, generation = 0;
    if (!read(t->physical + CTRL_MAGIC, std::span(reinterpret_cast<uint8_t*>(&magic), 8)) ||
        !read(t->physical + CTRL_GENERATION,
              std::span(reinterpret_cast<uint8_t*>(&generation), 8)) ||
        magic != SHADOW_MAGIC || generation != generation_) {
        LOG_WARN("shadow process %lld: its control page is not ours any more; left alone",
                 static_cast<long long>(pid_));
        return;
    }
    uint64_t one = 1;
    if (auto w = guest_.write_physical(t->physical + CTRL_LEASE,
                                       std::span(reinterpret_cast<uint8_t*>(&one), 8));
        !w) {
        LOG_WARN("cannot shorten the lost shadow's lease: %s", w.error().describe().c_str());
        return;
    }
    LOG_WARN("shadow process %lld lost; it will exit on its next loop",
             static_cast<long long>(pid_));
}

}  // namespace cloudvmi
