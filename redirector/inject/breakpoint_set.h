// Breakpoints we own, recorded in the recovery log before they exist in the guest.
#pragma once

#include <cstdint>
#include <set>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/guest/guest_access.h"
#include "redirector/journal/recovery_log.h"

namespace cloudvmi {

class BreakpointSet {
  public:
    BreakpointSet(GuestAccess& guest, RecoveryLog& log) : guest_(guest), log_(log) {}

    ErrorOr<void> arm(uint64_t addr);
    ErrorOr<void> disarm(uint64_t addr);
    ErrorOr<void> disarm_all();
    bool armed(uint64_t addr) const { return armed_.count(addr) != 0; }
    bool empty() const { return armed_.empty(); }

    // Moves a vCPU stopped on `addr` past it: QEMU re-triggers a breakpoint at the resume
    // address, so it is lifted for exactly one instruction of that vCPU.
    ErrorOr<void> step_over(VcpuId vcpu, uint64_t addr, Deadline deadline);

  private:
    GuestAccess& guest_;
    RecoveryLog& log_;
    std::set<uint64_t> armed_;
};

}  // namespace cloudvmi
