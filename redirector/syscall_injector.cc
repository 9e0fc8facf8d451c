#include "redirector/syscall_injector.h"

#include <cstring>

#include "common/log.h"
#include "common/strings.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

namespace {

constexpr uint64_t kUserSpaceEnd = 0x00007ffffffff000ULL;
constexpr uint16_t kKernelCs = 0x10;

bool is_user_address(uint64_t a) {
    return a != 0 && a < kUserSpaceEnd;
}

struct IretFrame {
    uint64_t rip, cs, rflags, rsp, ss;
};

}  // namespace

SyscallInjector::SyscallInjector(GuestAccess& guest, const KernelEntryPoints& kernel,
                                 RecoveryLog& log, InjectorOptions options)
    : guest_(guest), kernel_(kernel), log_(log), options_(options), traps_(guest, log) {}

SyscallInjector::~SyscallInjector() {
    if (phase_ != Phase::kIdle || !traps_.empty()) {
        if (guest_.running()) (void)guest_.interrupt(Deadline::after(options_.syscall_timeout));
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
    rec.cookie = cookie_;
    rec.thread_cr3 = cr3_;
    rec.expected_rcx = expected_rcx_;
    rec.thread_regs = original_;
    log_.commit();
}

ErrorOr<void> SyscallInjector::step_over(VcpuId vcpu, uint64_t addr) {
    return traps_.step_over(vcpu, addr, Deadline::after(options_.syscall_timeout));
}

ErrorOr<void> SyscallInjector::hijack(const std::set<uint64_t>& skip_cr3s) {
    if (phase_ != Phase::kIdle) return make_error(EBUSY, "internal: a thread is already hijacked");
    if (guest_.running()) return make_error(EINVAL, "internal: hijack needs a stopped guest");
    auto start = Clock::now();
    auto deadline = Deadline::after(options_.hijack_timeout);
    std::set<uint64_t> rejected = skip_cr3s;
    cookie_ = random_u64() | 1;
    TRY(traps_.arm(kernel_.sysret));
    TRY(guest_.resume());
    while (true) {
        auto ev = guest_.wait_for_stop(deadline);
        if (!ev) {
            if (guest_.running()) (void)guest_.interrupt(Deadline::after(options_.syscall_timeout));
            (void)traps_.disarm_all();
            if (ev.error().code() == ETIMEDOUT) {
                return make_error(ETIMEDOUT,
                                  strformat("no root thread of the guest returned from a syscall "
                                            "within %.0f s (%d seen, %d rejected); is the guest "
                                            "idle or hung?",
                                            elapsed_ms(start) / 1000, stats_.candidates_seen,
                                            stats_.candidates_rejected));
            }
            return std::unexpected(ev.error());
        }
        auto snap = TRY(guest_.snapshot(ev->vcpu));
        const kvm_regs& r = snap.state.regs;
        if (r.rip != kernel_.sysret) {
            // Not the trap we hunt with: step over any other breakpoint of ours (resuming on
            // it would stop again at once), carry on after anything else.
            TRY(step_over(ev->vcpu, r.rip));
            TRY(guest_.resume());
            continue;
        }
        ++stats_.candidates_seen;
        uint64_t space = address_space(snap.state.sregs.cr3);
        bool in_shadow_band = r.rcx >= kShadowBandStart && r.rcx < kShadowBandEnd;
        bool plausible = is_user_address(r.rcx) && is_user_address(r.rsp) && !in_shadow_band &&
                         snap.state.sregs.cs.selector == kKernelCs;
        if (!plausible || rejected.count(space)) {
            if (!plausible) {
                LOG_DEBUG("thread at sysret with rcx %s rsp %s cs %#x is not a user return",
                          hex_u64(r.rcx).c_str(), hex_u64(r.rsp).c_str(),
                          snap.state.sregs.cs.selector);
            }
            ++stats_.candidates_rejected;
            TRY(step_over(ev->vcpu, kernel_.sysret));
            TRY(guest_.resume());
            continue;
        }
        phase_ = Phase::kHeld;
        vcpu_ = ev->vcpu;
        original_ = r;
        cr3_ = snap.state.sregs.cr3;
        expected_rcx_ = r.rcx;
        journal_thread();

        auto uid = syscall(x86abi::kGetuid, {});
        if (!uid && uid.error().code() == EINTR && phase_ == Phase::kIdle) {
            // A signal took the thread back; it is repaired and released. Look again.
            TRY(traps_.arm(kernel_.sysret));
            TRY(guest_.resume());
            continue;
        }
        if (!uid) {
            auto err = uid.error();
            (void)release();
            return std::unexpected(err.with_context("checking the hijacked thread's uid"));
        }
        if (*uid != 0) {
            LOG_DEBUG("thread with cr3 %s runs as uid %lld, not root: let go",
                      hex_u64(cr3_).c_str(), static_cast<long long>(x86abi::as_signed(*uid)));
            rejected.insert(space);
            ++stats_.candidates_rejected;
            TRY(put_back(vcpu_));
            phase_ = Phase::kIdle;
            journal_thread();
            if (kernel_.iret != 0) TRY(traps_.disarm(kernel_.iret));
            if (kernel_.slow_return != 0) TRY(traps_.disarm(kernel_.slow_return));
            TRY(step_over(vcpu_, kernel_.sysret));
            TRY(guest_.resume());
            continue;
        }
        stats_.hijack_ms = elapsed_ms(start);
        LOG_INFO("hijacked a root thread (cr3 %s, user rip %s) after %.1f ms, %d candidates",
                 hex_u64(cr3_).c_str(), hex_u64(original_.rcx).c_str(), stats_.hijack_ms,
                 stats_.candidates_seen);
        return {};
    }
}

ErrorOr<void> SyscallInjector::put_back(VcpuId vcpu) {
    kvm_regs regs = original_;
    regs.rip = kernel_.sysret;
    return guest_.write_regs(vcpu, regs);
}

ErrorOr<uint64_t> SyscallInjector::syscall(uint64_t nr, std::initializer_list<uint64_t> args,
                                           std::optional<uint64_t> return_rip) {
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
    regs.rcx = return_rip.value_or(original_.rcx);
    regs.r11 = original_.r11;  // user rflags, as the syscall instruction would have saved
    regs.rsp = original_.rsp;  // user stack, even when we stand on the iret path
    regs.rbx = cookie_;
    regs.rip = kernel_.syscall_entry;
    regs.rflags = current.state.regs.rflags;
    expected_rcx_ = regs.rcx;
    TRY(traps_.arm(kernel_.sysret));
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
    auto started = Clock::now();
    int foreign_before = stats_.foreign_stops;
    auto arrival = TRY(run_until_return(Deadline::after(options_.syscall_timeout)));
    LOG_DEBUG("injected syscall %llu took %.2f ms, %d foreign stops",
              static_cast<unsigned long long>(nr), elapsed_ms(started),
              stats_.foreign_stops - foreign_before);
    if (!arrival.ours) {
        // run_until_return repaired a signal frame and released the thread.
        return make_error(EINTR, "the hijacked thread received a signal and was given back");
    }
    phase_ = Phase::kHeld;
    vcpu_ = arrival.vcpu;
    last_result_ = arrival.regs.rax;
    journal_thread();
    LOG_TRACE("injected syscall %llu -> %lld", static_cast<unsigned long long>(nr),
              static_cast<long long>(x86abi::as_signed(arrival.regs.rax)));
    return arrival.regs.rax;
}

ErrorOr<SyscallInjector::Arrival> SyscallInjector::run_until_return(Deadline deadline) {
    // Every stop costs QEMU a flush of its translation cache, so the slow path is watched
    // at its user-only entry (returns to kernel mode never pass there) and the shared
    // iretq is armed only once our thread is seen heading for it.
    bool watch_entry = kernel_.slow_return != 0 && kernel_.iret != 0;
    // Armed again every time: a failed re-insert after a step may have lost it.
    TRY(traps_.arm(kernel_.sysret));
    if (watch_entry) {
        TRY(traps_.arm(kernel_.slow_return));
    } else if (kernel_.iret != 0) {
        TRY(traps_.arm(kernel_.iret));
    }
    TRY(guest_.resume());
    while (true) {
        auto ev = guest_.wait_for_stop(deadline);
        if (!ev) {
            if (guest_.running()) {
                TRY(guest_.interrupt(Deadline::after(options_.syscall_timeout)));
            }
            if (ev.error().code() == ETIMEDOUT) {
                return make_error(ETIMEDOUT, "the injected syscall did not return in time");
            }
            return std::unexpected(ev.error());
        }
        auto snap = TRY(guest_.snapshot(ev->vcpu));
        const kvm_regs& r = snap.state.regs;
        // A child forked by our syscall inherits the cookie: the address space tells them apart.
        bool our_space = address_space(snap.state.sregs.cr3) == address_space(cr3_);
        if (r.rip == kernel_.sysret) {
            // Cookie and address space make the thread ours, whatever return address it
            // carries (a refused register write leaves the previous syscall's).
            if (our_space && r.rbx == cookie_) {
                if (r.rcx != expected_rcx_ || r.rsp != original_.rsp) {
                    LOG_WARN("hijacked thread back at sysret with rcx %s (expected %s)",
                             hex_u64(r.rcx).c_str(), hex_u64(expected_rcx_).c_str());
                }
                if (watch_entry) TRY(traps_.disarm(kernel_.iret));
                return Arrival{true, ev->vcpu, r, Landing::kSysret};
            }
            ++stats_.foreign_stops;
            TRY(step_over(ev->vcpu, kernel_.sysret));
            TRY(guest_.resume());
            continue;
        }
        if (watch_entry && r.rip == kernel_.slow_return) {
            if (our_space) {
                // rsp points at pt_regs; the user rbx is saved there (offset 5 * 8).
                uint64_t saved_rbx = 0, saved_cs = 0;
                TRY(guest_.read_virtual(ev->vcpu, r.rsp + 5 * 8,
                                        std::span(reinterpret_cast<uint8_t*>(&saved_rbx), 8)));
                TRY(guest_.read_virtual(ev->vcpu, r.rsp + 17 * 8,
                                        std::span(reinterpret_cast<uint8_t*>(&saved_cs), 8)));
                if (saved_rbx == cookie_ && (saved_cs & 3) == 3) TRY(traps_.arm(kernel_.iret));
            }
            ++stats_.foreign_stops;
            TRY(step_over(ev->vcpu, kernel_.slow_return));
            TRY(guest_.resume());
            continue;
        }
        if (kernel_.iret != 0 && r.rip == kernel_.iret) {
            if (!our_space || r.rbx != cookie_) {
                ++stats_.foreign_stops;
                TRY(step_over(ev->vcpu, kernel_.iret));
                TRY(guest_.resume());
                continue;
            }
            IretFrame frame{};
            TRY(guest_.read_virtual(ev->vcpu, r.rsp,
                                    std::span(reinterpret_cast<uint8_t*>(&frame), sizeof frame)));
            if ((frame.cs & 3) != 3) {
                // A return to kernel mode whose rbx happens to match: not ours.
                ++stats_.foreign_stops;
                TRY(step_over(ev->vcpu, kernel_.iret));
                TRY(guest_.resume());
                continue;
            }
            if (watch_entry) TRY(traps_.disarm(kernel_.iret));
            if (frame.rip == expected_rcx_ && frame.rsp == original_.rsp) {
                ++stats_.slow_returns;
                return Arrival{true, ev->vcpu, r, Landing::kIret};
            }
            if (frame.rip == expected_rcx_ - 2 && frame.rsp == original_.rsp) {
                // The kernel restarts our syscall: the thread re-executes the `syscall`
                // instruction before the return address and comes back later.
                TRY(step_over(ev->vcpu, kernel_.iret));
                TRY(guest_.resume());
                continue;
            }
            // A signal handler is about to run with our registers in its frame.
            TRY(repair_signal_frame(ev->vcpu, r, frame.rsp));
            return Arrival{false, ev->vcpu, r, Landing::kIret};
        }
        // A stop that is none of our traps (the VM paused from outside, a breakpoint that
        // is not ours): step past it rather than resume onto it.
        LOG_DEBUG("vCPU %d stopped at %s, not at one of our traps", ev->vcpu,
                  hex_u64(r.rip).c_str());
        TRY(step_over(ev->vcpu, r.rip));
        TRY(guest_.resume());
    }
}

ErrorOr<void> SyscallInjector::repair_signal_frame(VcpuId vcpu, const kvm_regs& at_iret,
                                                   uint64_t frame_rsp) {
    using namespace x86abi;
    uint64_t mc = frame_rsp + kSigframeMcontextOffset;
    uint64_t sc[kScRegCount];
    TRY_CTX(guest_.read_virtual(vcpu, mc, std::span(reinterpret_cast<uint8_t*>(sc), sizeof sc)),
            "reading the signal frame of the hijacked thread");
    // The cookie in the saved rbx identifies the context as ours; the saved rip is the
    // return address of whichever of our syscalls the signal interrupted.
    bool frame_is_ours = sc[kScRbx] == cookie_ && sc[kScRip] != 0 && sc[kScRip] < kUserSpaceEnd;
    if (!frame_is_ours) {
        LOG_ERROR(
            "signal frame at %s does not hold the injected context; the hijacked thread "
            "(cr3 %s) may see a wrong syscall result",
            hex_u64(mc).c_str(), hex_u64(cr3_).c_str());
        return make_error(EPROTO, "unrecognised signal frame on the hijacked thread");
    }
    const kvm_regs& o = original_;
    uint64_t fixed[kScRegCount] = {o.r8,  o.r9,  o.r10, o.r11, o.r12, o.r13, o.r14, o.r15, o.rdi,
                                   o.rsi, o.rbp, o.rbx, o.rdx, o.rax, o.rcx, o.rsp, o.rcx, o.r11};
    TRY(guest_.write_virtual(vcpu, mc,
                             std::span(reinterpret_cast<const uint8_t*>(fixed), sizeof fixed)));
    // The handler itself only relies on rdi/rsi/rdx/rax/rsp/rip; give the rest back too.
    kvm_regs regs = at_iret;
    regs.rbx = o.rbx;
    regs.rbp = o.rbp;
    regs.r8 = o.r8;
    regs.r9 = o.r9;
    regs.r10 = o.r10;
    regs.r12 = o.r12;
    regs.r13 = o.r13;
    regs.r14 = o.r14;
    regs.r15 = o.r15;
    TRY(guest_.write_regs(vcpu, regs));
    ++stats_.signals_repaired;
    LOG_WARN(
        "a signal reached the hijacked thread (cr3 %s); its frame was repaired and the "
        "thread given back",
        hex_u64(cr3_).c_str());
    phase_ = Phase::kIdle;
    TRY(traps_.disarm_all());
    journal_thread();
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

ErrorOr<void> SyscallInjector::settle_slow_paths() {
    if (kernel_.slow_return == 0 || kernel_.iret <= kernel_.slow_return) return {};
    for (VcpuId v : TRY(guest_.vcpus())) {
        // The path from its entry to the iretq is straight-line code with interrupts off.
        for (int steps = 0; steps < 512; ++steps) {
            auto snap = TRY(guest_.snapshot(v));
            uint64_t rip = snap.state.regs.rip;
            if (rip <= kernel_.slow_return || rip >= kernel_.iret) break;
            TRY(guest_.step(v, Deadline::after(options_.syscall_timeout)));
        }
    }
    return {};
}

ErrorOr<void> SyscallInjector::adopt(const RecoveryRecord& record) {
    if (phase_ != Phase::kIdle) return make_error(EBUSY, "internal: a thread is already hijacked");
    cookie_ = record.cookie;
    original_ = record.thread_regs;
    cr3_ = record.thread_cr3;
    expected_rcx_ = record.expected_rcx;
    vcpu_ = record.thread_vcpu;
    TRY(settle_slow_paths());
    // The thread may stand at one of the return instructions: untouched (its own registers),
    // or with our cookie from an earlier injected syscall (the log may already name the
    // next one, written ahead of the registers). Either way it is held, unless it is about
    // to enter a signal handler with our registers saved: then its frame is repaired.
    for (VcpuId v : TRY(guest_.vcpus())) {
        auto snap = TRY(guest_.snapshot(v));
        const kvm_regs& r = snap.state.regs;
        if (r.rip != kernel_.sysret && (kernel_.iret == 0 || r.rip != kernel_.iret)) continue;
        if (address_space(snap.state.sregs.cr3) != address_space(cr3_)) continue;
        kvm_regs pristine = original_;
        pristine.rip = r.rip;
        bool untouched = std::memcmp(&pristine, &r, sizeof r) == 0;
        if (!untouched && r.rbx != cookie_) continue;
        if (r.rip == kernel_.iret && !untouched) {
            IretFrame frame{};
            TRY(guest_.read_virtual(v, r.rsp,
                                    std::span(reinterpret_cast<uint8_t*>(&frame), sizeof frame)));
            if ((frame.cs & 3) != 3) continue;
            bool back_from_ours = frame.rsp == original_.rsp;  // plain or restarted return
            if (!back_from_ours) {
                vcpu_ = v;
                phase_ = Phase::kHeld;  // for journal_thread in the repair
                return repair_signal_frame(v, r, frame.rsp);
            }
        }
        vcpu_ = v;
        phase_ = Phase::kHeld;
        last_result_ = r.rax;  // what our last syscall returned (a clone's child, say)
        journal_thread();
        return {};
    }
    // Otherwise it is inside our syscall: the traps catch it on the way back.
    phase_ = Phase::kInFlight;
    TRY(traps_.arm(kernel_.sysret));
    journal_thread();
    return {};
}

ErrorOr<void> SyscallInjector::finish(Deadline deadline) {
    if (phase_ != Phase::kInFlight) return {};
    auto arrival = TRY(run_until_return(deadline));
    if (arrival.ours) {
        phase_ = Phase::kHeld;
        vcpu_ = arrival.vcpu;
        last_result_ = arrival.regs.rax;
        journal_thread();
    }
    return {};
}

ErrorOr<void> SyscallInjector::release() {
    if (phase_ == Phase::kInFlight) {
        LOG_WARN("waiting for an injected syscall to finish before giving the thread back");
        if (auto r = finish(Deadline::after(options_.syscall_timeout)); !r) {
            // Never let it go like this: it would return to user mode with our registers.
            // The breakpoints stay armed and the log names it, for whoever comes next.
            return std::unexpected(
                r.error().with_context("the hijacked thread is still inside an injected syscall"));
        }
    }
    if (phase_ == Phase::kHeld) {
        TRY(put_back(vcpu_));
        phase_ = Phase::kIdle;
        journal_thread();
    }
    TRY(traps_.disarm_all());
    return {};
}

}  // namespace cloudvmi
