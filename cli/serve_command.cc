// `cloudvmi serve --stdio`: this host's tree for a mount on another host, over ssh.
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <string>

#include "cli/commands.h"
#include "common/log.h"
#include "fs/config.h"
#include "fs/filesystem.h"
#include "fs/wire_server.h"

namespace cloudvmi::cli {

namespace {

const char kServeUsage[] =
    "Usage: cloudvmi serve --stdio [--config FILE] [--node NAME] [OPTIONS]\n"
    "\n"
    "Serves one node directory of this host's tree to a cloudvmi mount on another host,\n"
    "speaking cloudvmi's wire protocol on standard input and output. A mount starts it\n"
    "through ssh for each node configured with ssh: (see cloudvmi(1), REMOTE NODES).\n"
    "Changes are decided and audited by this host's policy.\n"
    "\n"
    "Options:\n"
    "  --stdio              serve on standard input and output (the only transport)\n"
    "  --config FILE        configuration (default /etc/cloudvmi/cloudvmi.yaml; without\n"
    "                       it, the local libvirt (qemu:///system) under the host name)\n"
    "  --node NAME          the node directory to serve (default: the configuration's first)\n"
    "  --state-dir DIR      recovery logs and locks (default /run/cloudvmi)\n"
    "  --log-level LEVEL    error, warn, info, debug or trace (default warn), on stderr\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 when the mount hung up, 1 after a protocol error, 2 usage or\n"
    "configuration error.\n";

struct ServeOptions {
    bool stdio = false;
    std::string config;
    std::string node;
    std::string state_dir;
};

int usage_error(const std::string& what) {
    std::fprintf(stderr, "cloudvmi serve: %s (see cloudvmi serve --help)\n", what.c_str());
    return kExitUsage;
}

// The configuration file, or this host's libvirt under the host name.
ErrorOr<fs::Config> load_config(const std::string& path) {
    if (!path.empty() || ::access(fs::kDefaultConfigPath, F_OK) == 0)
        return fs::Config::load_file(path.empty() ? fs::kDefaultConfigPath : path);
    char host[HOST_NAME_MAX + 1] = {};
    ::gethostname(host, sizeof host - 1);
    std::string yaml = std::string("nodes:\n  - name: \"") + host + "\"\n    uri: qemu:///system\n";
    return fs::Config::parse(yaml, "(built-in serve configuration)");
}

// The node to serve (`wanted`, or the configuration's first local one), with the
// configuration cut down to it: a server connects to nothing else, and above all to no
// other host (whose own configuration would name this one).
ErrorOr<std::string> served_node(fs::Config& config, const std::string& wanted) {
    bool listed = !config.vms.empty() || config.nodes.empty();
    std::string node = wanted;
    if (node.empty()) {
        if (listed) {
            node = config.node;
        } else {
            for (const auto& n : config.nodes) {
                if (!n.remote()) {
                    node = n.name;
                    break;
                }
            }
        }
    }
    std::vector<fs::NodeConfig> kept;
    for (const auto& n : config.nodes) {
        if (n.name == node && !n.remote()) kept.push_back(n);
    }
    if (kept.empty() && !(listed && node == config.node))
        return make_error(ENOENT, "no local node '" + node + "' in the configuration");
    config.nodes = std::move(kept);
    if (!config.nodes.empty()) config.vms.clear();  // a libvirt node is served alone
    return node;
}

// The protocol owns the original stdin and stdout; fd 0 becomes /dev/null and fd 1 stderr,
// so that nothing else printed or inherited can interleave with frames.
bool take_stdio(int& in_fd, int& out_fd) {
    in_fd = ::fcntl(0, F_DUPFD_CLOEXEC, 3);
    out_fd = ::fcntl(1, F_DUPFD_CLOEXEC, 3);
    int devnull = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (in_fd < 0 || out_fd < 0 || devnull < 0) return false;
    ::dup2(devnull, 0);
    ::close(devnull);
    ::dup2(2, 1);
    return true;
}

}  // namespace

int serve_main(int argc, char** argv, const std::string& guardian_program) {
    ServeOptions opts;
    static const option kLong[] = {{"stdio", no_argument, nullptr, 's'},
                                   {"config", required_argument, nullptr, 'c'},
                                   {"node", required_argument, nullptr, 'n'},
                                   {"state-dir", required_argument, nullptr, 'd'},
                                   {"log-level", required_argument, nullptr, 'l'},
                                   {"help", no_argument, nullptr, 'h'},
                                   {nullptr, 0, nullptr, 0}};
    optind = 1;
    opterr = 0;
    for (int c; (c = ::getopt_long(argc, argv, "h", kLong, nullptr)) != -1;) {
        switch (c) {
            case 's':
                opts.stdio = true;
                break;
            case 'c':
                opts.config = optarg;
                break;
            case 'n':
                opts.node = optarg;
                break;
            case 'd':
                opts.state_dir = optarg;
                break;
            case 'l':
                if (!log::set_level_by_name(optarg))
                    return usage_error(std::string("bad --log-level '") + optarg + "'");
                break;
            case 'h':
                std::fputs(kServeUsage, stdout);
                return kExitOk;
            default:
                return usage_error(std::string("unknown option ") + argv[optind - 1]);
        }
    }
    if (optind < argc) return usage_error(std::string("unexpected argument ") + argv[optind]);
    if (!opts.stdio) return usage_error("--stdio is required");
    auto config = load_config(opts.config);
    if (!config) return usage_error(config.error().describe());
    auto node = served_node(*config, opts.node);
    if (!node) return usage_error(node.error().message());
    if (!opts.state_dir.empty()) config->state_dir = opts.state_dir;
    if (config->state_dir.empty()) config->state_dir = GuestSession::default_state_dir();
    auto governance = fs::load_governance(*config);
    if (!governance) return usage_error(governance.error().describe());

    int in_fd = -1, out_fd = -1;
    if (!take_stdio(in_fd, out_fd)) return usage_error("cannot take standard input and output");
    ::signal(SIGPIPE, SIG_IGN);  // a mount that hangs up ends the read loop, not the process
    fs::Filesystem filesystem(*config, fs::Filesystem::session_options(*config, guardian_program));
    filesystem.set_governance(std::move(*governance));
    filesystem.start_nodes([](const std::string&, const fs::VmSet::Change&) {}, Millis(5000));
    int rc = fs::serve_wire(filesystem, *node, in_fd, out_fd);
    filesystem.shutdown();
    return rc;
}

}  // namespace cloudvmi::cli
