// `cloudvmi state diff|apply FILE`: desired sysctls and files per VM glob. diff reports
// drift; apply writes what drifted through the mount (the policy decides, the audit trail
// records) and reads each value back. Both are idempotent and quiet when nothing drifted,
// for cron.
#include <iostream>
#include <nlohmann/json.hpp>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/desired_state.h"
#include "apps/snapshot_json.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

struct StateOptions {
    CommonOptions common;
    std::string file;
    bool all = false;  // also list settings in sync
};

nlohmann::json drift_json(const Drift& d) {
    nlohmann::json j = {
        {"node", d.vm.node},
        {"vm", d.vm.name},
        {"kind", d.setting.kind == DesiredSetting::Kind::kSysctl ? "sysctl" : "file"},
        {"key", d.setting.key},
        {"status", status_name(d.status)}};
    if (d.setting.kind == DesiredSetting::Kind::kSysctl) j["desired"] = d.setting.value;
    if (!d.current.empty()) j["current"] = d.current;
    if (!d.error.empty()) j["error"] = d.error;
    return j;
}

std::string drift_text(const Drift& d) {
    bool sysctl = d.setting.kind == DesiredSetting::Kind::kSysctl;
    std::string line = strformat("%-24s %-8s %-6s %s", d.vm.id().c_str(), status_name(d.status),
                                 sysctl ? "sysctl" : "file", d.setting.key.c_str());
    if (sysctl && d.status == Drift::Status::kDrift) {
        line += ": " + d.current + " -> " + printable(d.setting.value, 256);
    } else if (!sysctl && d.status == Drift::Status::kDrift) {
        line += ": differs (" + d.current + " now)";
    }
    if (!d.error.empty()) line += ": " + d.error;
    return line;
}

int run_state(const StateOptions& o, bool do_apply) {
    const char* program = do_apply ? "cloudvmi state apply" : "cloudvmi state diff";
    auto text = read_file(o.file, 16 << 20);
    if (!text) {
        std::cerr << program << ": " << text.error().describe() << "\n";
        return kAppUsage;
    }
    auto state = parse_desired_state(*text);
    if (!state) {
        std::cerr << program << ": " << o.file << ": " << state.error().message() << "\n";
        return kAppUsage;
    }
    auto vms = selected_vms(o.common, program);
    if (!vms) return kAppUnreachable;
    Progress progress(!o.common.quiet, vms->size());
    std::vector<Drift> all;
    for (const auto& vm : *vms) {
        progress.step(vm.id());
        for (auto& d : compare(vm, state->for_vm(vm))) {
            if (do_apply) apply(d);
            all.push_back(std::move(d));
        }
    }
    bool drift = false, error = false, failed = false;
    nlohmann::json j = nlohmann::json::array();
    for (const auto& d : all) {
        drift |= d.status == Drift::Status::kDrift || d.status == Drift::Status::kMissing;
        error |= d.status == Drift::Status::kError;
        failed |= d.status == Drift::Status::kFailed;
        if (d.status == Drift::Status::kInSync && !o.all) continue;
        if (o.common.json) {
            j.push_back(drift_json(d));
        } else {
            std::cout << drift_text(d) << "\n";
        }
    }
    if (o.common.json) std::cout << json_text(j, 2) << std::endl;
    if (failed) return kAppFailed;
    if (error) return kAppUnreachable;
    return drift ? kAppFinding : kAppOk;
}

}  // namespace

int state_main(int argc, char** argv) {
    StateOptions o;
    CLI::App app{
        "Desired state (cloudvmi-state(5)): `diff` shows where VMs drifted from the "
        "sysctls and files of FILE, `apply` writes them through the mount's policy and "
        "audit trail and reads each back. Exit status: 0 in sync (or all applied), 1 "
        "drift (diff), 2 bad FILE, 3 a VM unreachable, 4 a write refused or failed.",
        "cloudvmi state"};
    app.require_subcommand(1);
    app.fallthrough();  // common options after the subcommand too
    add_common_options(app, o.common);
    auto* diff = app.add_subcommand("diff", "show drift; change nothing");
    auto* apply_cmd = app.add_subcommand("apply", "write what drifted; report each change");
    for (auto* sub : {diff, apply_cmd}) {
        sub->add_option("file", o.file, "the desired state (YAML)")->required();
        sub->add_flag("--all", o.all, "also list settings already in sync");
    }
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    return run_state(o, apply_cmd->parsed());
}

}  // namespace cloudvmi::apps
