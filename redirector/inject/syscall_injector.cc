#include "redirector/inject/syscall_injector.h"

#include <cstring>

#include "common/log.h"
#include "common/strings.h"
#include "redirector/x86/guest_abi.h"
#include "redirector/x86/page_walker.h"

namespace cloudvmi {

namespace {

constexpr uint64_t kUserSpaceEnd = 0x00007ffffffff000ULL;
constexpr uint16_t kKernelCs = 0x10;
constexpr uint8_t kSyscallInsn[2] = {0x0f, 0x05};
constexpr uint64_t kPrGetSeccomp = 21;
constexpr const char* kInitKeptForLast = "init, borrowed only if no other process comes by";
constexpr Millis kInitLastFor{1000};
// A thread that may not be borrowed but returns from syscalls all the time (a busy
// container, a non-root server) would stop the VM twice per syscall while another is
// awaited. After a few such stops in a row the trap is lifted for a rest that doubles up
// to the longest, and after each rest it stays armed for two of them at least (a thread
// woken with the busy one, by the same timer, comes by second). A thread that comes by
// during a rest is caught at one of its later syscalls.
constexpr int kRefusedStopsBeforeRest = 4;
constexpr int kRefusedStopsBetweenRests = 2;
constexpr Millis kFirstTrapRest{8};
constexpr Millis kLongestTrapRest{64};

std::set<uint64_t> merged(std::set<uint64_t> a, const std::set<uint64_t>& b) {
    a.insert(b.begin(), b.end());
    return a;
}

bool is_user_address(uint64_t a) {
    return a != 0 && a < kUserSpaceEnd;
}

const char* syscall_name(uint64_t nr) {
    using namespace x86abi;
    switch (nr) {
        case kGetuid:
            return "getuid";
        case kGetpid:
            return "getpid";
        case kGetppid:
            return "getppid";
        case kMprotect:
            return "mprotect";
        case kPrctl:
            return "prctl";
        case kMmap:
            return "mmap";
        case kMunmap:
            return "munmap";
        case kClone:
            return "clone";
        case kWait4:
            return "wait4";
        default:
            return "syscall";
    }
}

}  // namespace

SyscallInjector::SyscallInjector(GuestAccess& guest, const KernelEntryPoints& kernel,
                                 RecoveryLog& log, Deadline deadline)
    : guest_(guest), kernel_(kernel), log_(log), deadline_(deadline), traps_(guest, log) {}

SyscallInjector::~SyscallInjector() {
    if (phase_ != Phase::kIdle || !traps_.empty()) {
        deadline_ = Deadline::after(kCleanupGrace);
        if (guest_.running()) (void)guest_.interrupt(Deadline::after(kCleanupGrace));
        if (auto r = release(); !r) {
            LOG_ERROR("could not give back the hijacked guest thread: %s",
                      r.error().describe().c_str());
        }
    }
}

void SyscallInjector::journal_thread() {
    auto& rec = log_.edit();
    rec.syscall_entry = kernel_.syscall_entry;
    rec.sysret = kernel_.sysret;
    rec.slow_return = kernel_.slow_return;
    rec.iret = kernel_.iret;
    switch (phase_) {
        case Phase::kIdle:
            rec.thread_phase = ThreadPhase::kNone;
            break;
        case Phase::kHeld:
            rec.thread_phase = ThreadPhase::kHeld;
            break;
        case Phase::kInFlight:
            rec.thread_phase = ThreadPhase::kInFlight;
            break;
    }
    rec.thread_vcpu = vcpu_;
    rec.thread_cr3 = cr3_;
    rec.landing = landing_;
    rec.thread_regs = original_;
    log_.commit();
}

ErrorOr<void> SyscallInjector::step_over(VcpuId vcpu, uint64_t addr) {
    return traps_.step_over(vcpu, addr, deadline_);
}

ErrorOr<void> SyscallInjector::hijack(const std::set<uint64_t>& skip_cr3s,
                                      const std::set<int64_t>& foreign_pids) {
    if (phase_ != Phase::kIdle) return make_error(EBUSY, "internal: a thread is already hijacked");
    if (guest_.running()) return make_error(EINVAL, "internal: hijack needs a stopped guest");
    auto start = Clock::now();
    std::set<uint64_t> rejected = skip_cr3s;
    // Init is borrowed only when no other process came by for a while (at most half the
    // time left): its death would be the guest's.
    auto left = deadline_.when() - Clock::now();
    Deadline init_allowed = Deadline::after(std::min<Clock::duration>(kInitLastFor, left / 2));
    std::set<uint64_t> init_space;
    while (true) {
        TRY(catch_candidate(init_allowed.expired() ? rejected : merged(rejected, init_space)));
        auto why = vet_candidate(init_allowed, foreign_pids);
        if (!why) {
            auto err = why.error();
            if (!is_transport_error(err)) (void)release();
            return std::unexpected(err.with_context("checking a candidate thread"));
        }
        if (why->empty()) break;
        if (*why == kInitKeptForLast) {
            init_space.insert(address_space(cr3_));
        } else {
            rejected.insert(address_space(cr3_));
        }
        TRY(let_go(*why));
    }
    stats_.hijack_ms = elapsed_ms(start);
    LOG_INFO(
        "holding a root thread without seccomp (pid %lld, cr3 %s, user rip %s) after "
        "%.1f ms, %d candidates, %d kernel-wide stops",
        static_cast<long long>(pid_), hex_u64(cr3_).c_str(), hex_u64(original_.rcx).c_str(),
        stats_.hijack_ms, stats_.candidates_seen, stats_.kernel_trap_stops);
    return {};
}

ErrorOr<void> SyscallInjector::catch_candidate(const std::set<uint64_t>& rejected) {
    auto armed_at = Clock::now();
    TRY(traps_.arm(kernel_.sysret));
    TRY(guest_.resume());
    auto disarm = [&]() -> ErrorOr<void> {
        if (guest_.running()) TRY(guest_.interrupt(Deadline::after(kCleanupGrace)));
        TRY(traps_.disarm(kernel_.sysret));
        stats_.kernel_trap_armed_ms += elapsed_ms(armed_at);
        return {};
    };
    int refused_in_a_row = 0;
    int refused_allowed = kRefusedStopsBeforeRest;
    Millis rest = kFirstTrapRest;
    while (true) {
        auto ev = guest_.wait_for_stop(deadline_);
        if (!ev) {
            (void)disarm();
            if (ev.error().code() == ETIMEDOUT) {
                return make_error(
                    ETIMEDOUT,
                    strformat("no usable thread of the guest returned from a syscall in time "
                              "(%d seen, %d rejected%s%s)",
                              stats_.candidates_seen, stats_.candidates_rejected,
                              stats_.rejected.empty() ? "" : ": ", stats_.rejected.c_str()));
            }
            return std::unexpected(ev.error());
        }
        auto snap = TRY(guest_.snapshot(ev->vcpu));
        const kvm_regs& r = snap.state.regs;
        if (r.rip != kernel_.sysret) {
            // Not our trap: step over any other breakpoint (resuming on it would stop again).
            TRY(step_over(ev->vcpu, r.rip));
            TRY(guest_.resume());
            continue;
        }
        ++stats_.kernel_trap_stops;
        uint64_t space = address_space(snap.state.sregs.cr3);
        bool in_shadow_band = r.rcx >= kShadowBandStart && r.rcx < kShadowBandEnd;
        bool plausible = is_user_address(r.rcx) && r.rcx >= 2 && is_user_address(r.rsp) &&
                         !in_shadow_band && snap.state.sregs.cs.selector == kKernelCs;
        if (plausible && !rejected.count(space)) {
            // The thread must have come from a `syscall` instruction right before its return
            // address: later syscalls re-execute it (a sysret after execve, say, has none).
            uint8_t insn[2] = {};
            plausible = guest_.read_virtual(ev->vcpu, r.rcx - 2, insn).has_value() &&
                        std::memcmp(insn, kSyscallInsn, 2) == 0;
            if (plausible) {
                ++stats_.candidates_seen;
                TRY(disarm());
                phase_ = Phase::kHeld;
                in_kernel_ = true;
                vcpu_ = ev->vcpu;
                original_ = r;
                cr3_ = snap.state.sregs.cr3;
                landing_ = r.rcx;
                journal_thread();
                return {};
            }
        }
        if (++refused_in_a_row < refused_allowed) {
            TRY(step_over(ev->vcpu, kernel_.sysret));
            TRY(guest_.resume());
            continue;
        }
        stats_.kernel_trap_armed_ms += elapsed_ms(armed_at);
        TRY(rest_trap(rest));
        armed_at = Clock::now();
        rest = std::min(rest * 2, kLongestTrapRest);
        refused_in_a_row = 0;
        refused_allowed = kRefusedStopsBetweenRests;
    }
}

ErrorOr<void> SyscallInjector::rest_trap(Millis rest) {
    ++stats_.kernel_trap_rests;
    // Lifted, the trap needs no step over it: the thread at it runs on with the guest.
    TRY(traps_.disarm(kernel_.sysret));
    TRY(guest_.resume());
    auto other = guest_.wait_for_stop(deadline_.min(Deadline::after(rest)));
    if (!other && other.error().code() != ETIMEDOUT) return std::unexpected(other.error());
    // Stopped by something else meanwhile, or now by us: either way nothing of ours is
    // armed there, and the guest may go on. At the deadline the caller's wait ends at once.
    if (!other) TRY(guest_.interrupt(Deadline::after(kCleanupGrace)));
    TRY(traps_.arm(kernel_.sysret));
    return guest_.resume();
}

ErrorOr<std::string> SyscallInjector::vet_candidate(Deadline init_allowed,
                                                    const std::set<int64_t>& foreign_pids) {
    pid_ = x86abi::as_signed(TRY(syscall(x86abi::kGetpid, {})));
    if (foreign_pids.count(pid_)) return std::string("in another namespace (seen before)");
    if (!foreign_pids.empty()) {
        // Short-lived children of a process in a container would each cost a full check.
        int64_t ppid = x86abi::as_signed(TRY(syscall(x86abi::kGetppid, {})));
        if (foreign_pids.count(ppid)) {
            return strformat("child of %lld, which is in another namespace",
                             static_cast<long long>(ppid));
        }
    }
    uint64_t uid = TRY(syscall(x86abi::kGetuid, {}));
    if (uid != 0) return strformat("uid %lld", static_cast<long long>(x86abi::as_signed(uid)));
    // A thread under a seccomp filter may be killed by any further syscall of ours.
    uint64_t mode = TRY(syscall(x86abi::kPrctl, {kPrGetSeccomp}));
    if (mode != 0) {
        return x86abi::is_error_result(mode)
                   ? strformat("prctl(PR_GET_SECCOMP) failed: %s",
                               std::strerror(static_cast<int>(-x86abi::as_signed(mode))))
                   : strformat("seccomp mode %llu", static_cast<unsigned long long>(mode));
    }
    if (pid_ == 1) {
        // Asked only now that no seccomp filter can object. The VM's init sees kthreadd as
        // pid 2, in no session; a container's init sees its own processes, or none (ESRCH).
        uint64_t sid_of_2 = TRY(syscall(x86abi::kGetsid, {2}));
        if (sid_of_2 != 0)
            return std::string("init of another pid namespace (its pid 2 is not kthreadd)");
        if (!init_allowed.expired()) return std::string(kInitKeptForLast);
    }
    return std::string();
}

ErrorOr<void> SyscallInjector::let_go(const std::string& why) {
    ++stats_.candidates_rejected;
    std::string entry = strformat("pid %lld: %s", static_cast<long long>(pid_), why.c_str());
    LOG_INFO("not borrowing the thread with %s", entry.c_str());
    if (!stats_.rejected.empty()) stats_.rejected += "; ";
    if (stats_.rejected.size() < 2000) stats_.rejected += entry;
    bool was_in_kernel = in_kernel_;
    VcpuId vcpu = vcpu_;
    TRY(release());
    // Given back at sysretq: move it past, or the trap armed again would stop it at once.
    if (was_in_kernel) TRY(guest_.step(vcpu, deadline_));
    return {};
}

ErrorOr<void> SyscallInjector::set_landing(uint64_t landing) {
    if (phase_ != Phase::kHeld) return make_error(EINVAL, "internal: no thread is held");
    if (landing == landing_) return {};
    uint8_t insn[2] = {};
    TRY(guest_.read_virtual(vcpu_, landing - 2, insn));
    if (std::memcmp(insn, kSyscallInsn, 2) != 0) {
        return make_error(EPROTO, "no syscall instruction before the landing " + hex_u64(landing));
    }
    TRY(traps_.disarm(landing_));
    landing_ = landing;
    journal_thread();
    return {};
}

ErrorOr<uint64_t> SyscallInjector::syscall(uint64_t nr, std::initializer_list<uint64_t> args) {
    if (phase_ != Phase::kHeld) return make_error(EINVAL, "internal: no thread is held");
    if (args.size() > 6) return make_error(EINVAL, "internal: more than six syscall arguments");
    auto current = TRY(guest_.snapshot(vcpu_));
    kvm_regs regs = original_;
    uint64_t a[6] = {};
    size_t i = 0;
    for (uint64_t v : args)
        a[i++] = v;
    regs.rax = nr;
    regs.rdi = a[0];
    regs.rsi = a[1];
    regs.rdx = a[2];
    regs.r10 = a[3];
    regs.r8 = a[4];
    regs.r9 = a[5];
    regs.rflags = current.state.regs.rflags;
    if (in_kernel_) {
        // What the `syscall` instruction would have left for the kernel's entry code.
        regs.rip = kernel_.syscall_entry;
        regs.rcx = landing_;
        regs.r11 = original_.r11;
    } else {
        regs.rip = landing_ - 2;
    }
    auto started = Clock::now();
    auto back = run_to_landing(regs);
    if (!back) {
        return std::unexpected(back.error().with_context(strformat(
            "injected %s (%llu)", syscall_name(nr), static_cast<unsigned long long>(nr))));
    }
    LOG_DEBUG("injected syscall %llu -> %lld in %.2f ms", static_cast<unsigned long long>(nr),
              static_cast<long long>(x86abi::as_signed(back->rax)), elapsed_ms(started));
    return back->rax;
}

ErrorOr<void> SyscallInjector::run_code(uint64_t entry, uint64_t landing) {
    if (phase_ != Phase::kHeld) return make_error(EINVAL, "internal: no thread is held");
    if (in_kernel_) return make_error(EINVAL, "internal: the thread is not in user mode yet");
    auto current = TRY(guest_.snapshot(vcpu_));
    uint64_t saved_landing = landing_;
    TRY(traps_.disarm(landing_));
    landing_ = landing;
    kvm_regs regs = original_;
    regs.rip = entry;
    regs.rflags = current.state.regs.rflags;
    auto back = run_to_landing(regs);
    if (!back) return std::unexpected(back.error().with_context("running code in the thread"));
    TRY(traps_.disarm(landing_));
    landing_ = saved_landing;
    journal_thread();
    return {};
}

ErrorOr<kvm_regs> SyscallInjector::run_to_landing(const kvm_regs& regs) {
    TRY(traps_.arm(landing_));
    phase_ = Phase::kInFlight;
    journal_thread();
    if (auto w = guest_.write_regs(vcpu_, regs); !w) {
        // Not started: the thread still stands where it was, held.
        if (!is_transport_error(w.error())) {
            phase_ = Phase::kHeld;
            journal_thread();
        }
        return std::unexpected(w.error());
    }
    TRY(guest_.resume());
    auto back = TRY(wait_for_landing());
    return back;
}

bool SyscallInjector::is_our_thread_at_landing(const VcpuState& s) const {
    // No other thread runs on our user stack; a forked child has another address space.
    return s.regs.rip == landing_ && s.user_mode() &&
           address_space(s.sregs.cr3) == address_space(cr3_) && s.regs.rsp == original_.rsp;
}

ErrorOr<kvm_regs> SyscallInjector::wait_for_landing() {
    // A long wait: the thread may have been killed meanwhile (SIGKILL, the OOM killer, a
    // seccomp kill); then it never lands, and waiting on is pointless. Checked every
    // slice, whether the guest stopped meanwhile (others at the landing) or not.
    Deadline next_check = Deadline::after(kLivenessSlice);
    while (true) {
        auto ev = guest_.wait_for_stop(deadline_.min(next_check));
        if (!ev && ev.error().code() == ETIMEDOUT && !deadline_.expired())
            ev = guest_.interrupt(Deadline::after(kCleanupGrace));
        if (!ev) {
            if (guest_.running()) {
                TRY(guest_.interrupt(Deadline::after(kCleanupGrace)));
            }
            if (ev.error().code() == ETIMEDOUT) {
                return make_error(ETIMEDOUT, "the borrowed thread did not come back in time");
            }
            return std::unexpected(ev.error());
        }
        auto snap = TRY(guest_.snapshot(ev->vcpu));
        if (is_our_thread_at_landing(snap.state)) {
            ++stats_.landings;
            phase_ = Phase::kHeld;
            in_kernel_ = false;
            vcpu_ = ev->vcpu;
            last_result_ = snap.state.regs.rax;
            journal_thread();
            return snap.state.regs;
        }
        if (next_check.expired()) {
            if (!TRY(address_space_alive())) return std::unexpected(thread_gone());
            next_check = Deadline::after(kLivenessSlice);
        }
        uint64_t rip = snap.state.regs.rip;
        if (traps_.armed(rip)) {
            ++stats_.foreign_stops;
        } else {
            LOG_DEBUG("vCPU %d stopped at %s, not at one of our traps", ev->vcpu,
                      hex_u64(rip).c_str());
        }
        // A single step gets past a breakpoint that is not ours too.
        TRY(step_over(ev->vcpu, rip));
        TRY(guest_.resume());
    }
}

Error SyscallInjector::thread_gone() {
    phase_ = Phase::kIdle;
    in_kernel_ = false;
    journal_thread();
    return Error(ESRCH, strformat("the borrowed thread (pid %lld) is gone: its process exited "
                                  "during an injected syscall",
                                  static_cast<long long>(pid_)));
}

ErrorOr<bool> SyscallInjector::address_space_alive() {
    // An exiting process's page tables are torn down (exit_mmap clears the top-level
    // entries of user space) before its task is gone, so the top-level entry covering the
    // thread's own stack tells whether its address space still exists. A freed table page
    // reused by another address space may still look alive: then the deadline decides.
    VcpuId any = TRY(guest_.vcpus()).front();
    bool la57 = (TRY(guest_.snapshot(any)).state.sregs.cr4 & kCr4La57) != 0;
    PhysicalReader read = [this](uint64_t pa, std::span<uint8_t> out) {
        return guest_.read_physical(pa, out);
    };
    auto present = top_level_present(read, address_space(cr3_), original_.rsp, la57);
    return present ? *present : true;  // cannot tell: keep waiting
}

ErrorOr<void> SyscallInjector::put_back() {
    kvm_regs regs = original_;
    if (in_kernel_) {
        regs.rip = kernel_.sysret;
    } else {
        // In user mode right after a syscall: sysretq would have set rip from rcx and
        // rflags from r11, which the vCPU already holds.
        auto current = TRY(guest_.snapshot(vcpu_));
        regs.rip = original_.rcx;
        regs.rflags = current.state.regs.rflags;
    }
    return guest_.write_regs(vcpu_, regs);
}

ErrorOr<void> SyscallInjector::adopt(const RecoveryRecord& record) {
    if (phase_ != Phase::kIdle) return make_error(EBUSY, "internal: a thread is already hijacked");
    original_ = record.thread_regs;
    cr3_ = record.thread_cr3;
    landing_ = record.landing;
    vcpu_ = record.thread_vcpu;
    // The thread may stand at sysretq untouched, or in user mode on its own stack pointer:
    // then it is inside no syscall and runs none of its own code, so it is held wherever it
    // stands. Mostly that is the landing; but the log names the landing a step before or
    // after the thread moves there (set_landing(), the start and end of run_code()), and
    // a session may die in between. Otherwise it is still running our code (in the kernel,
    // or in a signal handler below its stack pointer) and comes back to the landing.
    for (VcpuId v : TRY(guest_.vcpus())) {
        auto snap = TRY(guest_.snapshot(v));
        const kvm_regs& r = snap.state.regs;
        if (address_space(snap.state.sregs.cr3) != address_space(cr3_)) continue;
        kvm_regs pristine = original_;
        pristine.rip = kernel_.sysret;
        bool untouched = std::memcmp(&pristine, &r, sizeof r) == 0 && !snap.state.user_mode();
        bool in_user_mode = snap.state.user_mode() && r.rsp == original_.rsp;
        if (!untouched && !in_user_mode) continue;
        vcpu_ = v;
        phase_ = Phase::kHeld;
        in_kernel_ = untouched;
        // What our last syscall returned (a clone's child, say), if the thread came back
        // from it; elsewhere no syscall of ours has completed.
        last_result_ = (untouched || r.rip == landing_) ? r.rax : static_cast<uint64_t>(-EINTR);
        journal_thread();
        return {};
    }
    phase_ = Phase::kInFlight;
    TRY(traps_.arm(landing_));
    journal_thread();
    return {};
}

ErrorOr<void> SyscallInjector::finish() {
    if (phase_ != Phase::kInFlight) return {};
    TRY(traps_.arm(landing_));
    TRY(guest_.resume());
    TRY(wait_for_landing());
    return {};
}

ErrorOr<void> SyscallInjector::release() {
    if (phase_ == Phase::kInFlight) {
        LOG_WARN("waiting for an injected syscall to finish before giving the thread back");
        if (auto r = finish(); !r) {
            // Never let it go like this: it would return to user mode with our registers.
            // The breakpoints stay armed and the log names it, for whoever comes next.
            return std::unexpected(
                r.error().with_context("the borrowed thread is still running our code"));
        }
    }
    if (phase_ == Phase::kHeld) {
        TRY(put_back());
        phase_ = Phase::kIdle;
        in_kernel_ = false;
        journal_thread();
    }
    TRY(traps_.disarm_all());
    return {};
}

ErrorOr<void> SyscallInjector::read_memory(uint64_t va, std::span<uint8_t> out) {
    if (phase_ != Phase::kHeld) return make_error(EINVAL, "internal: no thread is held");
    return guest_.read_virtual(vcpu_, va, out);
}

ErrorOr<void> SyscallInjector::write_memory(uint64_t va, std::span<const uint8_t> data) {
    if (phase_ != Phase::kHeld) return make_error(EINVAL, "internal: no thread is held");
    return guest_.write_virtual(vcpu_, va, data);
}

}  // namespace cloudvmi
