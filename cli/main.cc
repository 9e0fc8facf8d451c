// cloudvmi: agentless, writable introspection of QEMU/KVM guests.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/commands.h"

namespace {

const char kUsage[] =
    "Usage: cloudvmi guest --gdb ENDPOINT [OPTIONS] COMMAND [ARGS]\n"
    "       cloudvmi --help | --version\n"
    "\n"
    "Reads and changes the live state of a running QEMU/KVM guest from the host, by\n"
    "running system calls inside the guest through QEMU's gdbstub. Nothing is\n"
    "installed in the guest.\n"
    "\n"
    "Subcommands:\n"
    "  guest     operate on one guest (see 'cloudvmi guest --help')\n"
    "\n"
    "See cloudvmi(1).\n";

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fputs(kUsage, stderr);
        return cloudvmi::cli::kExitUsage;
    }
    std::string cmd = argv[1];
    if (cmd == "--help" || cmd == "-h") {
        std::fputs(kUsage, stdout);
        return cloudvmi::cli::kExitOk;
    }
    if (cmd == "--version" || cmd == "-V") {
        std::printf("cloudvmi %s\n", CLOUDVMI_VERSION);
        return cloudvmi::cli::kExitOk;
    }
    if (cmd == "guest") return cloudvmi::cli::guest_main(argc - 1, argv + 1);
    if (cmd == "guard") return cloudvmi::cli::guard_main(argc - 2, argv + 2);
    std::fprintf(stderr, "cloudvmi: unknown command '%s'\n\n%s", cmd.c_str(), kUsage);
    return cloudvmi::cli::kExitUsage;
}
