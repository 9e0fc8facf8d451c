// Desired state (cloudvmi-state(5)): sysctls and small files per VM glob, compared with and
// written to the VMs through their /vmi trees.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "apps/vm_tree.h"
#include "common/error.h"

namespace cloudvmi::apps {

struct DesiredSetting {
    enum class Kind { kSysctl, kFile } kind = Kind::kSysctl;
    std::string key;     // "vm.swappiness" or "/etc/motd"
    std::string value;   // the sysctl's value, or the file's whole content
    mode_t mode = 0644;  // a file created by apply
    // The file in the VM's tree: proc/sys/vm/swappiness, root/etc/motd.
    std::string tree_path() const;
};

struct DesiredGroup {
    std::vector<std::string> match;  // VM globs, as --vm takes them
    std::vector<DesiredSetting> settings;
};

struct DesiredState {
    std::vector<DesiredGroup> groups;
    // The settings for `vm`: every matching group's, a later group's value winning per key.
    std::vector<DesiredSetting> for_vm(const VmRef& vm) const;
};

// Parses the YAML text; EINVAL with the offending line on any error (unknown keys
// included: a misspelt "sysctls:" must not silently manage nothing).
ErrorOr<DesiredState> parse_desired_state(const std::string& yaml);

// Whether a sysctl's current text is its desired value: compared field by field, as the
// kernel prints some vectors tab-separated ("32768\t60999") and reads them space-separated.
bool sysctl_equal(std::string_view current, std::string_view desired);

struct Drift {
    VmRef vm;
    DesiredSetting setting;
    enum class Status { kInSync, kDrift, kMissing, kError, kApplied, kFailed } status{};
    std::string current;  // what the VM has (a sysctl's value; a file's size for files)
    std::string error;
};

const char* status_name(Drift::Status s);

// Compares one VM with its settings.
std::vector<Drift> compare(const VmRef& vm, const std::vector<DesiredSetting>& settings);

// Writes a drifted or missing setting, then reads it back: kApplied when it now matches,
// kFailed with the reason otherwise (the policy's EACCES, the guest's EINVAL...).
void apply(Drift& drift);

}  // namespace cloudvmi::apps
