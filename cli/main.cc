// cloudvmi: agentless, writable introspection of QEMU/KVM guests.
#include <cstdio>
#include <cstring>
#include <string>
#include <utility>

#include "apps/apps.h"
#include "cli/commands.h"
#include "fs/fuse_server.h"

namespace {

const char kUsage[] =
    "Usage: cloudvmi [OPTIONS] MOUNTPOINT         mount the live tree of the VMs (see --help)\n"
    "       cloudvmi guest --gdb ENDPOINT [OPTIONS] COMMAND [ARGS]\n"
    "       cloudvmi policy check|explain FILE ...     the policy file (see cloudvmi-policy(5))\n"
    "       cloudvmi serve --stdio [OPTIONS]   serve this host's VMs to a mount elsewhere\n"
    "       cloudvmi top|ps|find|state|secmon|exporter [OPTIONS]   applications on a mount\n"
    "                                          (each has --help; see cloudvmi-apps(7))\n"
    "       cloudvmi --help | --version\n"
    "\n"
    "Reads and changes the live state of running QEMU/KVM guests from the host, by\n"
    "running system calls inside the guests through QEMU's gdbstub. Nothing is\n"
    "installed in the guests. See cloudvmi(1).\n";

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fputs(kUsage, stderr);
        return cloudvmi::cli::kExitUsage;
    }
    std::string cmd = argv[1];
    if (cmd == "guest") return cloudvmi::cli::guest_main(argc - 1, argv + 1);
    if (cmd == "guard") return cloudvmi::cli::guard_main(argc - 2, argv + 2);
    if (cmd == "policy") return cloudvmi::cli::policy_main(argc - 1, argv + 1);
    using AppMain = int (*)(int, char**);
    static const std::pair<const char*, AppMain> kApps[] = {
        {"top", cloudvmi::apps::top_main},       {"ps", cloudvmi::apps::ps_main},
        {"find", cloudvmi::apps::find_main},     {"state", cloudvmi::apps::state_main},
        {"secmon", cloudvmi::apps::secmon_main}, {"exporter", cloudvmi::apps::exporter_main}};
    for (const auto& [name, app_main] : kApps) {
        if (cmd == name) return app_main(argc - 1, argv + 1);
    }
    if (cmd == "serve") {
        const char* self = cloudvmi::cli::self_executable();
        return cloudvmi::cli::serve_main(argc - 1, argv + 1, self ? self : "");
    }
    // Anything else is the mount, with FUSE's conventions (and its --help/--version).
    cloudvmi::fs::MountSettings settings;
    settings.version = CLOUDVMI_VERSION;
    if (const char* self = cloudvmi::cli::self_executable()) settings.guardian_program = self;
    return cloudvmi::cli::mount_main(argc, argv, settings);
}
