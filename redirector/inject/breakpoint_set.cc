#include "redirector/inject/breakpoint_set.h"

namespace cloudvmi {

ErrorOr<void> BreakpointSet::arm(uint64_t addr) {
    if (armed_.count(addr)) return {};
    // Write-ahead: the log may name a breakpoint that is not set yet, never the reverse.
    log_.edit().add_breakpoint(addr);
    log_.commit();
    TRY(guest_.insert_breakpoint(addr));
    armed_.insert(addr);
    return {};
}

ErrorOr<void> BreakpointSet::disarm(uint64_t addr) {
    if (!armed_.count(addr)) return {};
    TRY(guest_.remove_breakpoint(addr));
    armed_.erase(addr);
    log_.edit().remove_breakpoint(addr);
    log_.commit();
    return {};
}

ErrorOr<void> BreakpointSet::disarm_all() {
    std::set<uint64_t> copy = armed_;
    for (uint64_t a : copy)
        TRY(disarm(a));
    return {};
}

ErrorOr<void> BreakpointSet::step_over(VcpuId vcpu, uint64_t addr, Deadline deadline) {
    bool was_armed = armed_.count(addr) != 0;
    // A refused removal leaves it armed (and known as such, to be removed later); a
    // failed re-insertion leaves it unarmed, so that the next arm() really inserts it.
    if (was_armed) TRY(guest_.remove_breakpoint(addr));
    auto stepped = guest_.step(vcpu, deadline);
    if (was_armed) {
        if (auto r = guest_.insert_breakpoint(addr); !r) {
            armed_.erase(addr);
            return r;
        }
    }
    if (!stepped) return std::unexpected(stepped.error());
    return {};
}

}  // namespace cloudvmi
