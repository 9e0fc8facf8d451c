#include "redirector/recovery.h"

#include "common/log.h"
#include "common/strings.h"
#include "redirector/shadow_layout.h"
#include "redirector/syscall_injector.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

std::string RecoveryReport::describe() const {
    return strformat("breakpoints removed: %d, hijacked thread %s, parent region %s, shadow %s",
                     breakpoints_removed,
                     thread_restored ? "restored" : (thread_lost ? "NOT found" : "none"),
                     parent_region_unmapped ? "unmapped" : "none",
                     shadow_ended ? "ended" : "none");
}

ErrorOr<RecoveryReport> recover_guest(GuestAccess& guest, const RecoveryRecord& record,
                                      RecoveryLog& log, const ShadowOptions& options) {
    RecoveryReport report;
    log.edit() = record;
    log.commit();

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
        kernel.iret = record.iret;
        SyscallInjector inj(guest, kernel, log, options.injector);
        TRY_CTX(inj.adopt(record), "locating the hijacked thread");
        if (record.parent_region != 0) {
            // Only reachable once the thread is held; a thread still in flight is waited for
            // by the munmap itself.
            auto r = inj.syscall(x86abi::kMunmap, {record.parent_region, SHADOW_REGION_SIZE});
            if (r && !x86abi::is_error_result(*r)) {
                report.parent_region_unmapped = true;
                log.edit().parent_region = 0;
                log.commit();
            }
        }
        if (auto r = inj.release(); !r) {
            LOG_ERROR("recovery: the hijacked thread could not be given back: %s",
                      r.error().describe().c_str());
            report.thread_lost = true;
            log.edit().thread_phase = ThreadPhase::kNone;
            log.commit();
        } else {
            report.thread_restored = true;
        }
    }

    // 3. The shadow, if one was started: catch it and make it exit.
    if (record.shadow_phase != ShadowPhase::kNone && record.shadow_region != 0) {
        RecoveryRecord r = record;
        if (record.shadow_phase == ShadowPhase::kStarting || record.shadow_cr3 == 0) {
            // Never caught: its address space is unknown. Catch it where it parks.
            LOG_INFO("recovery: catching a shadow that was still starting");
        }
        ShadowOptions o = options;
        if (record.shadow_phase == ShadowPhase::kBatchInFlight) o.acquire_timeout = options.batch_timeout;
        auto shadow = ShadowProcess::adopt(guest, log, r, o);
        if (auto t = shadow->terminate(); !t) {
            LOG_WARN("recovery: shadow %lld not ended: %s", static_cast<long long>(record.shadow_pid),
                     t.error().describe().c_str());
        } else {
            report.shadow_ended = true;
        }
        if (guest.running()) TRY(guest.interrupt(Deadline::after(options.acquire_timeout)));
    }
    log.edit().shadow_phase = ShadowPhase::kNone;
    log.edit().thread_phase = ThreadPhase::kNone;
    log.commit();
    return report;
}

}  // namespace cloudvmi
