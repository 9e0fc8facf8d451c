#include "redirector/recovery/recovery.h"

#include "common/log.h"
#include "common/strings.h"
#include "redirector/inject/syscall_injector.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

std::string RecoveryReport::describe() const {
    return strformat("breakpoints removed: %d, hijacked thread %s, parent region %s, shadow %s",
                     breakpoints_removed,
                     thread_restored ? "restored" : (thread_gone ? "gone" : "none"),
                     parent_region_unmapped ? "unmapped" : "none", shadow_ended ? "ended" : "none");
}

ErrorOr<RecoveryReport> recover_guest(GuestAccess& guest, const RecoveryRecord& record,
                                      RecoveryLog& log, const ShadowOptions& options) {
    RecoveryReport report;
    bool shadow_never_started = false;
    log.edit() = record;
    log.commit();
    // A rebooted kernel has its entry elsewhere (KASLR): nothing of the record applies.
    if (record.syscall_entry != 0 &&
        (record.thread_phase != ThreadPhase::kNone || record.shadow_phase != ShadowPhase::kNone)) {
        auto vcpus = TRY(guest.vcpus());
        if (!vcpus.empty()) {
            auto kernel = discover_kernel_entry_points(guest, vcpus[0]);
            if (kernel && kernel->syscall_entry != record.syscall_entry) {
                LOG_WARN(
                    "recovery: the guest kernel was restarted since (entry %s, was %s); "
                    "nothing to restore",
                    hex_u64(kernel->syscall_entry).c_str(), hex_u64(record.syscall_entry).c_str());
                log.edit() = RecoveryRecord{};
                log.commit();
                return report;
            }
        }
    }

    // 1. No breakpoint of the dead session may fire again.
    for (uint32_t i = 0; i < record.breakpoint_count; ++i) {
        if (guest.remove_breakpoint(record.breakpoints[i])) ++report.breakpoints_removed;
        log.edit().remove_breakpoint(record.breakpoints[i]);
    }
    log.commit();

    // 2. The hijacked thread, if any: find it, finish its syscall, unmap the region it got,
    //    give it its registers back.
    if (record.thread_phase != ThreadPhase::kNone) {
        KernelEntryPoints kernel;
        kernel.syscall_entry = record.syscall_entry;
        kernel.sysret = record.sysret;
        kernel.slow_return = record.slow_return;
        kernel.iret = record.iret;
        // The injected syscalls are short (mmap, clone, wait4 of a helper that exits at once,
        // munmap), but the guest may be slow: wait long rather than abandon the thread.
        SyscallInjector inj(guest, kernel, log, Deadline::after(options.recovery_timeout));
        TRY_CTX(inj.adopt(record), "locating the hijacked thread");
        if (auto back = inj.finish(); !back) {
            if (back.error().code() != ESRCH)
                return std::unexpected(
                    back.error().with_context("waiting for the hijacked thread to come back"));
            // Killed meanwhile: its process, and the region mapped in it, went with it.
            LOG_WARN("recovery: %s", back.error().describe().c_str());
            report.thread_gone = true;
        }
        int64_t helper = helper_cloned_just_now(inj, record).value_or(record.helper_pid);
        if (inj.hijacked() && helper > 0) {
            // Reap the helper (it exits right after its own clone), or it stays a zombie:
            // it was cloned without an exit signal, so P itself never waits for it.
            auto r =
                inj.syscall(x86abi::kWait4, {static_cast<uint64_t>(helper), 0, x86abi::kWall, 0});
            if (r) {
                log.edit().helper_pid = 0;
                log.commit();
            }
        }
        if (inj.hijacked() && record.parent_region != 0 &&
            record.shadow_phase == ShadowPhase::kStarting) {
            // The helper reports the shadow's pid through the shared region; no pid and no
            // clone in flight means no shadow was ever started.
            int64_t s2 = 0;
            auto read = inj.read_memory(record.parent_region + SHADOW_CTRL_OFFSET + CTRL_S2_PID,
                                        std::span(reinterpret_cast<uint8_t*>(&s2), 8));
            if (read && s2 <= 0 && !helper_clone_in_flight(record)) shadow_never_started = true;
            if (read && s2 > 0) {
                log.edit().shadow_pid = s2;
                log.commit();
            }
        }
        if (inj.hijacked() && record.parent_region != 0) {
            if (auto r = unmap_parent_region(inj, log); r) {
                report.parent_region_unmapped = true;
            } else {
                LOG_WARN("recovery: %s", r.error().describe().c_str());
            }
        }
        TRY_CTX(inj.release(), "giving the hijacked thread back");
        report.thread_restored = !report.thread_gone;
    }

    // 3. The shadow, if one was started: catch it and make it exit.
    if (record.shadow_phase != ShadowPhase::kNone && record.shadow_region != 0 &&
        !shadow_never_started) {
        RecoveryRecord r = log.current();
        if (record.shadow_phase == ShadowPhase::kStarting || record.shadow_cr3 == 0) {
            // Never caught: its address space is unknown. Catch it where it parks.
            LOG_INFO("recovery: catching a shadow that was still starting");
        }
        ShadowOptions o = options;
        if (record.shadow_phase == ShadowPhase::kBatchInFlight)
            o.acquire_timeout = options.batch_timeout;
        auto shadow = ShadowProcess::adopt(guest, log, r, o);
        if (auto t = shadow->terminate(); !t) {
            LOG_WARN("recovery: shadow %lld not ended: %s",
                     static_cast<long long>(record.shadow_pid), t.error().describe().c_str());
        } else {
            report.shadow_ended = true;
        }
        if (guest.running()) TRY(guest.interrupt(Deadline::after(options.acquire_timeout)));
    }
    log.edit().shadow_phase = ShadowPhase::kNone;
    log.commit();
    return report;
}

}  // namespace cloudvmi
