// What every application shares: exit codes, the common options (--mount, --vm, --json),
// progress on stderr, and CLI11's parse with our exit code for usage errors.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "apps/vm_tree.h"

namespace cloudvmi::apps {

// Exit codes of the applications (cloudvmi-apps(7)); the mount's own are in cli/commands.h.
enum AppExit {
    kAppOk = 0,           // done; nothing found that asks for attention
    kAppFinding = 1,      // something found: drift, an alert, no matching process
    kAppUsage = 2,        // bad command line or input file
    kAppUnreachable = 3,  // the mount or a VM could not be read (the rest was still done)
    kAppFailed = 4,       // a change was refused (by the policy) or failed in the guest
};

struct CommonOptions {
    std::string mount = default_mount();
    std::vector<std::string> vms;  // globs
    bool json = false;
    bool quiet = false;  // no progress on stderr
};

// --mount, --vm (repeatable), --quiet and (unless `json` is false) --json on `app`.
void add_common_options(CLI::App& app, CommonOptions& options, bool json = true);

// Parses argv; on --help prints it and returns kAppOk, on a usage error prints it and
// returns kAppUsage; -1 when the command should run.
int parse_command_line(CLI::App& app, int argc, char** argv);

// The selected VMs, or an error printed on stderr (then kAppUnreachable is the exit code).
ErrorOr<std::vector<VmRef>> selected_vms(const CommonOptions& options, const char* program);

// "3/12 web-01": progress of a sweep on stderr, rewritten in place, only on a terminal.
class Progress {
  public:
    Progress(bool enabled, size_t total);
    ~Progress();
    void step(const std::string& what);

  private:
    bool enabled_;
    size_t total_, done_ = 0;
};

}  // namespace cloudvmi::apps
