// `cloudvmi [OPTIONS] MOUNTPOINT`: mounts /vmi (see fuse_server.cc).
#pragma once

#include <string>

namespace cloudvmi::fs {

struct MountSettings {
    std::string version;
    std::string guardian_program;  // the cloudvmi binary, for each session's guardian
};

// Runs the mount until it is unmounted or signalled; returns the process exit status.
int mount_main(int argc, char** argv, const MountSettings& settings);

}  // namespace cloudvmi::fs
