// `cloudvmi [OPTIONS] MOUNTPOINT`: loads the configuration and hands the mount to fs/.
#include <grp.h>

#include <cstdio>
#include <vector>

#include "cli/commands.h"
#include "cli/mount_options.h"
#include "common/log.h"
#include "common/strings.h"
#include "fs/config.h"
#include "fs/fuse_server.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi::cli {

namespace {

const char kMountUsage[] =
    "Usage: cloudvmi [OPTIONS] MOUNTPOINT\n"
    "       cloudvmi guest --gdb ENDPOINT [OPTIONS] COMMAND [ARGS]   (see cloudvmi guest --help)\n"
    "\n"
    "Mounts the live state of the configured VMs at MOUNTPOINT (usually /vmi):\n"
    "  MOUNTPOINT/<node>/<vm>/{proc,sys,root,.cloudvmi}\n"
    "\n"
    "Options:\n"
    "  --config=FILE, -o config=FILE   configuration (default /etc/cloudvmi/cloudvmi.yaml)\n"
    "  --state-dir=DIR, -o state_dir=DIR\n"
    "                                  recovery logs, locks, the background log (default "
    "/run/cloudvmi)\n"
    "  --log-level=LEVEL, -o log_level=LEVEL\n"
    "                                  error, warn, info, debug or trace (default warn)\n"
    "  -h, --help                      this text\n"
    "  -V, --version                   version\n"
    "\n"
    "FUSE options:\n";

// A group name, or a number, as the host knows it.
ErrorOr<gid_t> resolve_group(const std::string& name) {
    if (auto n = parse_u64(name); n && *n < 0xffffffffu) return static_cast<gid_t>(*n);
    std::vector<char> buf(16384);
    group g{};
    group* found = nullptr;
    int rc = ::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found);
    if (rc != 0) return make_error(rc, "looking up group " + name);
    if (found == nullptr) return make_error(ENOENT, "no group named " + name + " on this host");
    return found->gr_gid;
}

}  // namespace

int mount_main(int argc, char** argv, const fs::MountSettings& settings) {
    auto parsed = parse_mount_options(std::vector<std::string>(argv + 1, argv + argc));
    if (!parsed) {
        std::fprintf(stderr, "cloudvmi: %s (see --help)\n", parsed.error().message().c_str());
        return kExitUsage;
    }
    const MountOptions& opts = *parsed;
    if (opts.help) {
        std::fputs(kMountUsage, stdout);
        std::fflush(stdout);
        fs::print_fuse_help();
        return kExitOk;
    }
    if (opts.version) {
        std::printf("cloudvmi %s\n", settings.version.c_str());
        std::fflush(stdout);  // libfuse's lines come partly from a child process
        fs::print_fuse_version();
        return kExitOk;
    }
    if (opts.log_level && !log::set_level_by_name(*opts.log_level)) {
        std::fprintf(stderr, "cloudvmi: bad --log-level '%s'\n", opts.log_level->c_str());
        return kExitUsage;
    }
    std::string config_path = opts.config.value_or(fs::kDefaultConfigPath);
    auto config = fs::Config::load_file(config_path);
    if (!config) {
        std::fprintf(stderr, "cloudvmi: %s\n", config.error().describe().c_str());
        return kExitUsage;
    }
    if (!config->operators_group.empty()) {
        auto gid = resolve_group(config->operators_group);
        if (!gid) {
            std::fprintf(stderr, "cloudvmi: %s: operators_group: %s\n", config_path.c_str(),
                         gid.error().message().c_str());
            return kExitUsage;
        }
        config->operators_gid = *gid;
    }
    if (opts.state_dir) config->state_dir = *opts.state_dir;
    if (config->state_dir.empty()) config->state_dir = GuestSession::default_state_dir();
    if (config->vms.empty() && config->nodes.empty())
        LOG_WARN("%s configures no VM", config_path.c_str());
    auto governance = fs::load_governance(*config);
    if (!governance) {
        std::fprintf(stderr, "cloudvmi: %s\n", governance.error().describe().c_str());
        return kExitUsage;
    }
    return fs::serve_mount(*config, settings, opts.fuse_args, std::move(*governance));
}

}  // namespace cloudvmi::cli
