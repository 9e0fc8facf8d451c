#include "apps/app_support.h"

#include <unistd.h>

#include <cstdio>

namespace cloudvmi::apps {

void add_common_options(CLI::App& app, CommonOptions& options, bool json) {
    app.add_option("--mount", options.mount, "the cloudvmi mount point ($CLOUDVMI_MOUNT, /vmi)")
        ->capture_default_str();
    app.add_option("--vm", options.vms,
                   "VMs to include: a glob on the VM's name, or on NODE/VM when it has a '/' "
                   "(repeatable; default: every VM)")
        ->allow_extra_args(false);  // one glob per --vm: a FILE after it stays a FILE
    if (json) app.add_flag("--json", options.json, "JSON output");
    app.add_flag("-q,--quiet", options.quiet, "no progress on stderr");
}

int parse_command_line(CLI::App& app, int argc, char** argv) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e) == 0 ? kAppOk : kAppUsage;
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e) == 0 ? kAppOk : kAppUsage;
    } catch (const CLI::ParseError& e) {
        app.exit(e);
        return kAppUsage;
    }
    return -1;
}

ErrorOr<std::vector<VmRef>> selected_vms(const CommonOptions& options, const char* program) {
    auto vms = list_vms(options.mount, options.vms);
    if (vms && vms->empty() && !options.vms.empty()) {
        // A mistyped glob must not pass for "all clear" in a cron job.
        std::string globs;
        for (const auto& g : options.vms)
            globs += (globs.empty() ? "" : " ") + g;
        vms = make_error(ENOENT, "no VM matches " + globs + " under " + options.mount);
    }
    if (!vms) {
        std::fprintf(stderr, "%s: %s\n", program, vms.error().describe().c_str());
    }
    return vms;
}

Progress::Progress(bool enabled, size_t total)
    : enabled_(enabled && ::isatty(STDERR_FILENO) == 1), total_(total) {}

Progress::~Progress() {
    if (enabled_ && done_ > 0) std::fputs("\r\033[K", stderr);
}

void Progress::step(const std::string& what) {
    ++done_;
    if (enabled_) std::fprintf(stderr, "\r\033[K%zu/%zu %s", done_, total_, what.c_str());
}

}  // namespace cloudvmi::apps
