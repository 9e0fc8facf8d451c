// Subcommands of the cloudvmi program.
#pragma once

#include "fs/fuse_server.h"

namespace cloudvmi::cli {

// Exit codes shared by every subcommand (documented in cloudvmi(1)).
enum ExitCode {
    kExitOk = 0,
    kExitGuestError = 1,   // the guest refused the operation (its errno is printed)
    kExitUsage = 2,        // bad command line or configuration
    kExitUnreachable = 3,  // the VM could not be reached, attached or recognised
};

int guest_main(int argc, char** argv);
int guard_main(int argc, char** argv);
// `cloudvmi policy check|explain`: argv[0] is "policy".
int policy_main(int argc, char** argv);
// `cloudvmi serve --stdio`: argv[0] is "serve"; sessions start `guardian_program`.
int serve_main(int argc, char** argv, const std::string& guardian_program);
// The mount (`cloudvmi [OPTIONS] MOUNTPOINT`): argv[0] is the program.
int mount_main(int argc, char** argv, const fs::MountSettings& settings);

// Path of the running cloudvmi binary (for the guardian).
const char* self_executable();

}  // namespace cloudvmi::cli
