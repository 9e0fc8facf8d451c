// The security monitor's checks on one VM, all through its /vmi tree:
// - hidden processes: pids that answer a lookup (stat proc/PID) but are missing from the
//   proc/ listing, as a getdents filter in a rootkit leaves them; no baseline needed;
// - against a baseline taken earlier: kernel modules added, new listening sockets, changed
//   critical files (by SHA-256), new setuid or setgid files under given directories.
#pragma once

#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "apps/vm_tree.h"
#include "common/error.h"

namespace cloudvmi::apps {

struct Alert {
    std::string check;     // hidden-process, module-added, listener-added, file-changed, ...
    std::string severity;  // critical or warning
    std::string detail;    // one line for people
    nlohmann::json data;   // the facts, for programs
};

struct SecmonSettings {
    std::vector<std::string> files;         // guest paths whose content is watched
    std::vector<std::string> setuid_paths;  // guest directories searched for setuid files
    long probe_max = 0;                     // highest pid probed (0: derived, see below)
};

// The settings' paths are absolute guest paths without . or .. (EINVAL otherwise).
ErrorOr<void> check_settings(const SecmonSettings& settings);

// The defaults: passwd, shadow, group, sudoers, sshd_config and root's authorized_keys;
// setuid files under /usr/bin, /usr/sbin, /usr/local/bin, /usr/local/sbin, /tmp, /var/tmp
// and /dev/shm.
SecmonSettings default_settings();

// The settings' paths are absolute guest paths without . or .. (EINVAL otherwise).
ErrorOr<void> check_settings(const SecmonSettings& settings);

// Names from the guest are kept as printable() shows them (ASCII): what is saved reads
// back the same, and no guest byte reaches a terminal.
struct Baseline {
    std::set<std::string> modules;
    std::set<std::string> listeners;           // "tcp 0.0.0.0:22", or "tcp: <error>"
    std::map<std::string, std::string> files;  // path -> sha256, "absent" or "error: ..."
    std::set<std::string> setuid;              // "/usr/bin/passwd 4755"
    // What could not be looked at (a search cut short); said on stderr, not saved.
    std::vector<std::string> notes;
};

ErrorOr<Baseline> take_baseline(const VmRef& vm, const SecmonSettings& settings);
nlohmann::json baseline_json(const Baseline& b);
// EINVAL when `j` is not a baseline this program wrote.
ErrorOr<Baseline> baseline_from_json(const nlohmann::json& j);

// What changed from `before` to `now` that could be an intrusion.
std::vector<Alert> compare_baselines(const Baseline& before, const Baseline& now);

// Pids alive but not listed; `notes` gets the pids whose lookup failed twice (neither
// present nor absent). The probe runs from 1 to `probe_max`, or when that is 0 to the
// highest of the last allocated pid and the highest listed pid, plus 1024 (capped at the
// guest's pid_max); unlisted children of listed processes are examined whatever their pid.
// Threads (lookups of a thread id succeed too) and processes that started
// or ended during the probe are not reported.
ErrorOr<std::vector<Alert>> hidden_processes(const VmRef& vm, long probe_max,
                                             std::vector<std::string>* notes);

}  // namespace cloudvmi::apps
