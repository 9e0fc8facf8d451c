// `cloudvmi secmon baseline|check`: the security monitor. `baseline` records each VM's
// modules, listeners, watched files and setuid files; `check` probes for hidden processes
// and compares with the baseline. Alerts go to stdout as text or JSON lines; the exit status
// says whether there were any.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <ctime>
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/security_checks.h"
#include "apps/snapshot_json.h"
#include "common/paths.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

struct SecmonOptions {
    CommonOptions common;
    std::string baseline_dir = "/var/lib/cloudvmi/secmon";
    std::vector<std::string> files, setuid_paths;
    long probe_max = 0;
    bool no_probe = false;
};

std::string baseline_path(const SecmonOptions& o, const VmRef& vm) {
    return o.baseline_dir + "/" + vm.node + "/" + vm.name + ".json";
}

SecmonSettings settings_of(const SecmonOptions& o) {
    SecmonSettings s = default_settings();
    if (!o.files.empty()) s.files = o.files;
    if (!o.setuid_paths.empty()) s.setuid_paths = o.setuid_paths;
    s.probe_max = o.probe_max;
    return s;
}

// Written beside and renamed over, so that a check never reads half a baseline.
ErrorOr<void> save_baseline(const std::string& path, const Baseline& b) {
    TRY(ensure_private_dir(path.substr(0, path.rfind('/')), "baseline directory"));
    std::string tmp = path + ".tmp";
    ::unlink(tmp.c_str());
    auto fd = TRY(open_private_file(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC));
    std::string text = json_text(baseline_json(b), 2) + "\n";
    TRY(write_all(fd.get(), {reinterpret_cast<const uint8_t*>(text.data()), text.size()},
                  "the baseline"));
    if (::fsync(fd.get()) != 0 || ::rename(tmp.c_str(), path.c_str()) != 0) {
        return make_error(errno, "cannot save " + path);
    }
    return {};
}

ErrorOr<Baseline> load_baseline(const std::string& path) {
    auto text = TRY(read_file(path, 64 << 20));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) return make_error(EINVAL, path + " is not JSON");
    auto b = baseline_from_json(j);
    if (!b) return std::unexpected(b.error().with_context(path));
    return b;
}

std::string now_text() {
    char stamp[32];
    std::time_t t = std::time(nullptr);
    std::strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
    return stamp;
}

void print_alert(const SecmonOptions& o, const VmRef& vm, const Alert& a) {
    if (o.common.json) {
        nlohmann::json j = {{"time", now_text()}, {"node", vm.node},        {"vm", vm.name},
                            {"check", a.check},   {"severity", a.severity}, {"detail", a.detail},
                            {"data", a.data}};
        std::cout << json_text(j) << std::endl;
    } else {
        std::cout << strformat("%-24s %-8s %-15s %s", vm.id().c_str(), a.severity.c_str(),
                               a.check.c_str(), a.detail.c_str())
                  << std::endl;
    }
}

void print_notes(const char* program, const VmRef& vm, const std::vector<std::string>& notes) {
    for (const auto& note : notes)
        std::cerr << program << ": " << vm.id() << ": " << note << "\n";
}

int run_baseline(const SecmonOptions& o) {
    auto vms = selected_vms(o.common, "cloudvmi secmon baseline");
    if (!vms) return kAppUnreachable;
    Progress progress(!o.common.quiet, vms->size());
    int rc = kAppOk;
    for (const auto& vm : *vms) {
        progress.step(vm.id());
        auto b = take_baseline(vm, settings_of(o));
        auto saved = b ? save_baseline(baseline_path(o, vm), *b) : std::unexpected(b.error());
        if (!saved) {
            std::cerr << "cloudvmi secmon baseline: " << vm.id() << ": " << saved.error().describe()
                      << "\n";
            rc = kAppUnreachable;
            continue;
        }
        print_notes("cloudvmi secmon baseline", vm, b->notes);
        if (!o.common.quiet) {
            std::cerr << strformat("%s: %zu modules, %zu listeners, %zu files, %zu setuid\n",
                                   vm.id().c_str(), b->modules.size(), b->listeners.size(),
                                   b->files.size(), b->setuid.size());
        }
    }
    return rc;
}

// The checks of one VM; false when something could not be checked (said on stderr). Each
// check runs whatever became of the others: a failed probe must not hide a loaded module.
bool check_vm(const SecmonOptions& o, const VmRef& vm, size_t* alerts) {
    const char* program = "cloudvmi secmon check";
    auto complain = [&](const Error& e) {
        std::cerr << program << ": " << vm.id() << ": " << e.describe() << "\n";
        return false;
    };
    std::vector<Alert> found;
    std::vector<std::string> notes;
    bool complete = true;
    if (!o.no_probe) {
        if (auto hidden = hidden_processes(vm, o.probe_max, &notes); hidden) {
            found = std::move(*hidden);
        } else {
            complete = complain(hidden.error());
        }
    }
    auto before = load_baseline(baseline_path(o, vm));
    if (!before) {
        complete =
            complain(before.error().with_context("no usable baseline (run secmon baseline)"));
    } else if (auto now = take_baseline(vm, settings_of(o)); !now) {
        complete = complain(now.error());
    } else {
        for (auto& a : compare_baselines(*before, *now))
            found.push_back(std::move(a));
        notes.insert(notes.end(), now->notes.begin(), now->notes.end());
    }
    print_notes(program, vm, notes);
    for (const auto& a : found)
        print_alert(o, vm, a);
    *alerts += found.size();
    return complete;
}

int run_check(const SecmonOptions& o) {
    auto vms = selected_vms(o.common, "cloudvmi secmon check");
    if (!vms) return kAppUnreachable;
    Progress progress(!o.common.quiet, vms->size());
    size_t alerts = 0;
    bool complete = true;
    for (const auto& vm : *vms) {
        progress.step(vm.id());
        complete &= check_vm(o, vm, &alerts);
    }
    if (alerts > 0) return kAppFinding;
    return complete ? kAppOk : kAppUnreachable;
}

}  // namespace

int secmon_main(int argc, char** argv) {
    SecmonOptions o;
    CLI::App app{
        "The security monitor: `baseline` records each VM's kernel modules, listening "
        "sockets, watched files (SHA-256) and setuid files; `check` reports processes "
        "hidden from the /proc listing but alive (pid probing) and what changed since "
        "the baseline. Exit status: 0 no alert, 1 alerts, 2 usage, 3 a VM or its "
        "baseline could not be read.",
        "cloudvmi secmon"};
    app.require_subcommand(1);
    app.fallthrough();  // common options after the subcommand too
    add_common_options(app, o.common);
    app.add_option("--baseline-dir", o.baseline_dir, "where baselines are kept (one per VM)")
        ->capture_default_str();
    app.add_option("--file", o.files, "a guest file to watch (repeatable; replaces the defaults)");
    app.add_option("--setuid-path", o.setuid_paths,
                   "a guest directory to search for setuid files (repeatable; replaces the "
                   "defaults)");
    auto* baseline = app.add_subcommand("baseline", "record each VM's baseline");
    auto* check = app.add_subcommand("check", "probe and compare; print alerts");
    check->add_option("--probe-max", o.probe_max, "highest pid probed (default: derived)");
    check->add_flag("--no-probe", o.no_probe, "skip the hidden-process probe");
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    if (auto valid = check_settings(settings_of(o)); !valid) {
        std::cerr << "cloudvmi secmon: " << valid.error().message() << "\n";
        return kAppUsage;
    }
    return baseline->parsed() ? run_baseline(o) : run_check(o);
}

}  // namespace cloudvmi::apps
