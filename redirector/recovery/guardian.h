// The guardian: a small process that outlives a CloudVMI session and undoes its work.
//
// If the cloudvmi process dies (SIGKILL, OOM, crash), QEMU leaves the VM paused with our
// breakpoints armed and maybe a hijacked thread half-modified. Each session starts a
// guardian (a fresh exec of the cloudvmi binary, in its own session) before it touches
// the guest. The guardian blocks on a socket to its parent; when the parent is gone it
// takes the session lock, reads the recovery log, reconnects to the gdbstub, restores
// what the log names, removes every breakpoint and detaches, which resumes the VM. A VM
// that QMP shows stopped by someone else (paused, an I/O error, a migration) before the
// guardian connects is left stopped: the connection is closed without a detach.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace cloudvmi {

struct GuardianArgs {
    std::string log_path;
    std::string lock_path;
    uint64_t session_id = 0;
    int parent_fd = -1;       // the socket whose end-of-file means "parent gone"
    std::string report_path;  // where the guardian writes what it did
    // The VM's QMP socket (the session's qmp: key), asked whether its owner stopped the VM
    // while we were dead; empty: not asked, the VM is resumed as before.
    std::string qmp;
};

struct GuardianHandle {
    pid_t pid = 0;
    UniqueFd link;  // our end; closing it (or dying) wakes the guardian
};

// Starts `program guard ...` detached from us; returns once it has said it is ready.
ErrorOr<GuardianHandle> spawn_guardian(const std::string& program, const GuardianArgs& args);

// Body of `cloudvmi guard`. Returns the process exit status.
int run_guardian(const GuardianArgs& args);

// Parses the `guard` subcommand's arguments.
ErrorOr<GuardianArgs> parse_guardian_args(int argc, char** argv);

}  // namespace cloudvmi
