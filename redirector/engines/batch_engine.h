// How batches reach a shadow: the seam between GuestSession and the engines.
//
// GuestSession creates the shadow (through the trap machinery: bootstrap needs a stopped
// VM) and then hands it to one engine for its whole life. The trap engine runs each batch
// by catching the shadow at a breakpoint (one VM stop per batch); the mailbox engine posts
// it through guest RAM (no stop). What each failure means for the shadow is the session's
// decision; an engine only reports it with a precise errno.
#pragma once

#include <optional>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/shadow/syscall_batch.h"

namespace cloudvmi {

class BatchEngine {
  public:
    virtual ~BatchEngine() = default;

    virtual const char* name() const = 0;
    // Runs `batch` in the shadow. Errors: ESRCH (the shadow is gone, nothing ran), EBADMSG
    // (the shadow cannot be trusted), EAGAIN (not taken in time, withdrawn: nothing ran),
    // ETIMEDOUT (taken, not finished), EFAULT (out of the engine's reach, nothing ran);
    // anything else comes from the link to the VM.
    virtual ErrorOr<BatchOutcome> execute(const SyscallBatch& batch, Deadline deadline) = 0;
    // After a failed execute(): false when nothing of the batch can have run.
    virtual bool posted() const = 0;
    // When idle_work() is next due (nullopt: not until the next batch), and that work:
    // letting the VM run again after a burst, renewing the shadow's lease.
    virtual std::optional<Clock::time_point> idle_due() const = 0;
    virtual ErrorOr<void> idle_work() = 0;
    // Gives the shadow up without touching the VM: it exits by itself when its lease ends.
    virtual void abandon() = 0;
};

}  // namespace cloudvmi
