// The mount command's own options, separated from those it hands to FUSE.
//
// `cloudvmi [OPTIONS] MOUNTPOINT` takes ours as long options (`--config FILE`,
// `--config=FILE`) or inside `-o` lists (`-o allow_other,config=FILE`, as an fstab line
// writes them); everything else (`-f`, `-d`, `-s`, other `-o` entries, the mount point)
// is FUSE's. `cloudvmi SOURCE MOUNTPOINT`, as mount.fuse3 calls it, drops SOURCE.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/error.h"

namespace cloudvmi::cli {

struct MountOptions {
    std::optional<std::string> config;
    std::optional<std::string> state_dir;
    std::optional<std::string> log_level;
    bool help = false;
    bool version = false;
    std::string mountpoint;
    // For FUSE: argv[0], its options and the mount point, in their order.
    std::vector<std::string> fuse_args;
};

// `args` without the program name. EINVAL names what is wrong.
ErrorOr<MountOptions> parse_mount_options(const std::vector<std::string>& args);

}  // namespace cloudvmi::cli
