// The VM's run state as its owner sees it (QMP's query-status; libvirt's domain state),
// apart from the debug link. The gdbstub cannot tell a VM its owner paused from one it
// stopped for us (both are "stopped"); this can, and it is asked before cloudvmi touches
// a VM that should be running.
#pragma once

#include <string>

#include "common/deadline.h"
#include "common/error.h"

namespace cloudvmi {

struct VmRunState {
    bool running = false;
    // QEMU's RunState name: "running", "paused", "debug" (a debugger stopped it),
    // "io-error", "guest-panicked", "inmigrate", "postmigrate", "shutdown", ...
    std::string status;
};

class VmRunStateSource {
  public:
    virtual ~VmRunStateSource() = default;
    // A short description for messages ("qmp:/run/vm1.qmp").
    virtual std::string describe() const = 0;
    // The current state. Cheap (no round trip) while nothing has changed since the last
    // call, so it can be asked before every batch.
    virtual ErrorOr<VmRunState> current(Deadline deadline) = 0;
};

}  // namespace cloudvmi
