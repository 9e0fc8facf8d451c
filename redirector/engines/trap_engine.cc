#include "redirector/engines/trap_engine.h"

#include "common/log.h"

namespace cloudvmi {

TrapEngine::TrapEngine(ShadowProcess& shadow, Millis linger, LastBatch before_park)
    : shadow_(shadow), linger_(linger), before_park_(std::move(before_park)) {
    // A shadow just created is held: it is parked like one that just ran a batch.
    if (shadow_.state() == ShadowProcess::State::kHeld) park_at_ = Clock::now() + linger_;
}

ErrorOr<BatchOutcome> TrapEngine::execute(const SyscallBatch& batch, Deadline) {
    // The shadow's own batch timeout bounds the batch: a catch cannot be cut short safely.
    posted_ = false;
    if (shadow_.state() != ShadowProcess::State::kHeld &&
        shadow_.state() != ShadowProcess::State::kParked) {
        return make_error(ESRCH, "the shadow is gone");
    }
    posted_ = true;
    auto out = shadow_.execute(batch);
    if (shadow_.state() == ShadowProcess::State::kHeld) {
        if (linger_.count() <= 0) {
            TRY(park());
        } else {
            park_at_ = Clock::now() + linger_;
        }
    }
    return out;
}

std::optional<Clock::time_point> TrapEngine::idle_due() const {
    if (shadow_.state() != ShadowProcess::State::kHeld) return std::nullopt;
    return park_at_;
}

ErrorOr<void> TrapEngine::idle_work() {
    park_at_.reset();
    if (shadow_.state() != ShadowProcess::State::kHeld) return {};
    return park();
}

ErrorOr<void> TrapEngine::park() {
    park_at_.reset();
    if (auto last = before_park_ ? before_park_() : std::nullopt) {
        if (auto r = shadow_.execute(*last); !r) {
            LOG_DEBUG("batch before parking: %s", r.error().describe().c_str());
        }
    }
    return shadow_.park();
}

}  // namespace cloudvmi
