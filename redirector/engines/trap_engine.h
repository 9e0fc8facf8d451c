// The trap engine: every batch catches the shadow at a breakpoint, which stops the VM.
//
// After a batch the shadow stays caught (the VM paused) for a short linger, so that the
// next request of a burst (lookup, open, read, release of one `cat`) needs no new catch;
// then idle_work() parks it and the VM runs again. Before parking, a last batch asked of
// the session (its deferred closes) rides along, saving a catch later.
#pragma once

#include <functional>
#include <optional>

#include "redirector/engines/batch_engine.h"
#include "redirector/shadow/shadow_process.h"

namespace cloudvmi {

class TrapEngine final : public BatchEngine {
  public:
    // What to run just before parking (nullopt: nothing).
    using LastBatch = std::function<std::optional<SyscallBatch>()>;

    TrapEngine(ShadowProcess& shadow, Millis linger, LastBatch before_park);

    const char* name() const override { return "trap"; }
    ErrorOr<BatchOutcome> execute(const SyscallBatch& batch, Deadline deadline) override;
    bool posted() const override { return posted_; }
    std::optional<Clock::time_point> idle_due() const override;
    ErrorOr<void> idle_work() override;
    void abandon() override { shadow_.give_up_to_lease(); }

  private:
    ErrorOr<void> park();

    ShadowProcess& shadow_;
    Millis linger_;
    LastBatch before_park_;
    bool posted_ = false;
    std::optional<Clock::time_point> park_at_;
};

}  // namespace cloudvmi
