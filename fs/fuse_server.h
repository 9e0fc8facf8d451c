// The /vmi mount's FUSE side; the command line is cli/mount_command.cc's.
#pragma once

#include <string>
#include <vector>

#include "fs/config.h"
#include "fs/filesystem.h"

namespace cloudvmi::fs {

struct MountSettings {
    std::string version;
    std::string guardian_program;  // the cloudvmi binary, for each session's guardian
};

// Mounts `config`'s tree with FUSE's command line (argv[0], FUSE options, the mount
// point) and serves it until unmounted or signalled (SIGHUP reloads the policy); the
// process exit status.
int serve_mount(const Config& config, const MountSettings& settings,
                const std::vector<std::string>& fuse_command_line, Governance governance);
// FUSE's own option help and version lines, for `--help` and `--version`.
void print_fuse_help();
void print_fuse_version();

}  // namespace cloudvmi::fs
