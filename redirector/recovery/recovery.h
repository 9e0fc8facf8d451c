// Undoing what a dead CloudVMI process left in a guest, from its recovery record.
//
// Used by the guardian process (right after its parent dies) and by the next attach to
// the same VM (if the guardian died too). Every step is idempotent and bounded: the
// record may be a little ahead of what really happened (write-ahead), never behind.
#pragma once

#include "common/error.h"
#include "redirector/guest/guest_access.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/shadow/shadow_process.h"

namespace cloudvmi {

struct RecoveryReport {
    bool thread_restored = false;
    bool thread_gone = false;  // its process exited while our syscall ran: nothing to restore
    bool parent_region_unmapped = false;
    bool shadow_ended = false;
    int breakpoints_removed = 0;
    std::string describe() const;
};

// Puts the guest back as it was before the record's session touched it. The guest must be
// stopped (a fresh gdbstub connection) and stays stopped; the caller detaches or goes on.
// `log` is updated as the work proceeds, so a crash during recovery can be recovered too.
ErrorOr<RecoveryReport> recover_guest(GuestAccess& guest, const RecoveryRecord& record,
                                      RecoveryLog& log, const ShadowOptions& options);

}  // namespace cloudvmi
