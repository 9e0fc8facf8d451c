#include "apps/security_checks.h"

#include <sys/stat.h>

#include <algorithm>

#include "apps/guest_snapshot.h"
#include "apps/procfs.h"
#include "common/digest.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

// Bounds of the setuid search: a hostile guest can make directories as deep and as full as
// it likes, so the walk stops and says so rather than running forever.
constexpr int kMaxSetuidDepth = 6;
constexpr size_t kMaxSetuidEntries = 50000;
constexpr size_t kMaxWatchedFile = 16 << 20;

Alert make_alert(std::string check, std::string severity, std::string detail, nlohmann::json data) {
    return Alert{std::move(check), std::move(severity), std::move(detail), std::move(data)};
}

struct SetuidSearch {
    std::string tree_root;  // the VM's root/
    size_t budget = kMaxSetuidEntries;
    std::set<std::string>* found;
    std::vector<std::string>* notes;
};

void walk_setuid(SetuidSearch& search, const std::string& guest_dir, int depth) {
    auto names = list_dir(search.tree_root + guest_dir);
    if (!names) {
        if (names.error().code() != ENOENT) {
            search.notes->push_back("setuid search: " + printable(guest_dir, 256) + ": " +
                                    names.error().describe());
        }
        return;
    }
    for (const auto& name : *names) {
        if (search.budget == 0) {
            search.notes->push_back(strformat("setuid search stopped after %zu entries in %s",
                                              kMaxSetuidEntries,
                                              printable(guest_dir, 256).c_str()));
            return;
        }
        --search.budget;
        std::string guest_path = (guest_dir == "/" ? "" : guest_dir) + "/" + name;
        struct stat st {};
        if (::lstat((search.tree_root + guest_path).c_str(), &st) != 0) continue;
        if (S_ISDIR(st.st_mode)) {
            if (depth < kMaxSetuidDepth) {
                walk_setuid(search, guest_path, depth + 1);
            } else {
                search.notes->push_back("setuid search: not below " + printable(guest_path, 256));
            }
        } else if (S_ISREG(st.st_mode) && (st.st_mode & (S_ISUID | S_ISGID))) {
            search.found->insert(
                strformat("%s %04o", printable(guest_path, 4096).c_str(), st.st_mode & 07777));
        }
    }
}

// The first port of the guest's ephemeral range: UDP sockets bound there are clients.
unsigned ephemeral_start(const VmRef& vm) {
    auto text = read_file(vm.path + "/proc/sys/net/ipv4/ip_local_port_range", 4096);
    auto start = text ? parse_u64(split(split(*text, '\n').front(), '\t').front()) : std::nullopt;
    return start && *start > 0 && *start < 65536 ? static_cast<unsigned>(*start) : 32768;
}

void add_listeners(const VmRef& vm, Baseline& b) {
    unsigned ephemeral = ephemeral_start(vm);
    for (const char* proto : {"tcp", "tcp6", "udp", "udp6"}) {
        auto table = read_file(vm.path + "/proc/net/" + proto, 256 << 20);
        if (!table) {
            // No IPv6 in this guest is no news; any other failure is kept, so it shows.
            if (table.error().code() != ENOENT) {
                b.listeners.insert(std::string(proto) + ": " + table.error().describe());
            }
            continue;
        }
        for (const auto& l : parse_net_listeners(*table, proto)) {
            if (l.proto.starts_with("udp") && l.port >= ephemeral) continue;
            b.listeners.insert(l.key());
        }
    }
}

// One lookup of proc/PID, tried twice: a transient error must not end the probe.
ErrorOr<bool> pid_exists(const VmRef& vm, long pid) {
    std::string path = vm.path + "/proc/" + std::to_string(pid);
    auto first = exists(path);
    return first ? first : exists(path);
}

template <class T>
std::vector<T> added(const std::set<T>& before, const std::set<T>& now) {
    std::vector<T> out;
    std::set_difference(now.begin(), now.end(), before.begin(), before.end(),
                        std::back_inserter(out));
    return out;
}

// Children of listed processes that are not listed themselves. A rootkit that filters the
// listing seldom filters these files, and a child found this way escapes a probe bound
// that a guest's root can lower (last_pid, pid_max).
std::set<long> unlisted_children(const VmRef& vm, const std::set<long>& listed) {
    std::set<long> out;
    for (long pid : listed) {
        std::string p = std::to_string(pid);
        auto text = read_file(vm.path + "/proc/" + p + "/task/" + p + "/children", 1 << 20);
        if (!text) continue;  // gone, or a kernel without CONFIG_PROC_CHILDREN
        for (auto field : split(*text, ' ')) {
            while (!field.empty() && field.back() == '\n')
                field.remove_suffix(1);
            if (auto child = parse_pid_name(field); child && !listed.count(*child)) {
                out.insert(*child);
            }
        }
    }
    return out;
}

long probe_bound(const VmRef& vm, const std::set<long>& listed) {
    long last = 0, pid_max = 4194304;
    if (auto text = read_file(vm.path + "/proc/loadavg", 4096)) {
        if (auto l = parse_loadavg(*text)) last = l->last_pid;
    }
    if (auto text = read_file(vm.path + "/proc/sys/kernel/pid_max", 4096)) {
        if (auto v = parse_u64(split(*text, '\n').front()); v && *v > 0 && *v <= 4194304) {
            pid_max = static_cast<long>(*v);
        }
    }
    long highest = std::max(last, listed.empty() ? 0L : *listed.rbegin());
    return std::min(pid_max, highest + 1024);
}

}  // namespace

SecmonSettings default_settings() {
    return SecmonSettings{{"/etc/passwd", "/etc/shadow", "/etc/group", "/etc/sudoers",
                           "/etc/ssh/sshd_config", "/root/.ssh/authorized_keys"},
                          {"/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin", "/tmp",
                           "/var/tmp", "/dev/shm"},
                          0};
}

ErrorOr<void> check_settings(const SecmonSettings& settings) {
    for (const auto* list : {&settings.files, &settings.setuid_paths}) {
        for (const auto& path : *list) {
            if (!valid_guest_path(path)) {
                return make_error(EINVAL,
                                  "'" + path + "' is not an absolute guest path without . or ..");
            }
        }
    }
    return {};
}

ErrorOr<Baseline> take_baseline(const VmRef& vm, const SecmonSettings& settings) {
    TRY(check_settings(settings));
    Baseline b;
    for (auto& m : parse_modules(TRY(read_file(vm.path + "/proc/modules", 16 << 20)))) {
        b.modules.insert(printable(m, 256));
    }
    add_listeners(vm, b);
    for (const auto& path : settings.files) {
        // A file that cannot be read (too big, refused by the policy) is recorded as such:
        // a change either way is an alert, and the other checks still run.
        auto data = read_file(vm.path + "/root" + path, kMaxWatchedFile);
        b.files[path] = data                            ? sha256_hex(*data)
                        : data.error().code() == ENOENT ? "absent"
                                                        : "error: " + data.error().describe();
    }
    SetuidSearch search{vm.path + "/root", kMaxSetuidEntries, &b.setuid, &b.notes};
    for (const auto& dir : settings.setuid_paths)
        walk_setuid(search, dir, 0);
    return b;
}

nlohmann::json baseline_json(const Baseline& b) {
    return {{"version", 1},
            {"modules", b.modules},
            {"listeners", b.listeners},
            {"files", b.files},
            {"setuid", b.setuid}};
}

ErrorOr<Baseline> baseline_from_json(const nlohmann::json& j) {
    try {
        if (!j.is_object() || j.value("version", 0) != 1) {
            return make_error(EINVAL, "not a version 1 baseline");
        }
        Baseline b;
        b.modules = j.at("modules").get<std::set<std::string>>();
        b.listeners = j.at("listeners").get<std::set<std::string>>();
        b.files = j.at("files").get<std::map<std::string, std::string>>();
        b.setuid = j.at("setuid").get<std::set<std::string>>();
        return b;
    } catch (const nlohmann::json::exception& e) {
        return make_error(EINVAL, std::string("malformed baseline: ") + e.what());
    }
}

std::vector<Alert> compare_baselines(const Baseline& before, const Baseline& now) {
    std::vector<Alert> out;
    for (const auto& m : added(before.modules, now.modules)) {
        out.push_back(make_alert("module-added", "critical", "kernel module " + m + " loaded",
                                 {{"module", m}}));
    }
    for (const auto& m : added(now.modules, before.modules)) {
        out.push_back(make_alert("module-removed", "warning", "kernel module " + m + " unloaded",
                                 {{"module", m}}));
    }
    for (const auto& l : added(before.listeners, now.listeners)) {
        out.push_back(make_alert("listener-added", "warning", "new listening socket " + l,
                                 {{"listener", l}}));
    }
    for (const auto& [path, hash] : now.files) {
        auto it = before.files.find(path);
        if (it == before.files.end() || it->second == hash) continue;
        out.push_back(make_alert("file-changed", "critical",
                                 path + (hash == "absent" ? " removed" : " changed"),
                                 {{"path", path}, {"before", it->second}, {"now", hash}}));
    }
    for (const auto& s : added(before.setuid, now.setuid)) {
        out.push_back(
            make_alert("setuid-added", "critical", "new setuid/setgid file " + s, {{"file", s}}));
    }
    return out;
}

ErrorOr<std::vector<Alert>> hidden_processes(const VmRef& vm, long probe_max,
                                             std::vector<std::string>* notes) {
    auto listed = TRY(listed_pids(vm));
    long bound = probe_max > 0 ? probe_max : probe_bound(vm, listed);
    std::vector<long> candidates;
    for (long pid = 1; pid <= bound; ++pid) {
        if (listed.count(pid)) continue;
        auto present = pid_exists(vm, pid);
        // Neither present nor absent (a rootkit may answer its pid's lookup with an error):
        // looked at closer below, like a present one.
        if (!present)
            notes->push_back(strformat("pid %ld: %s", pid, present.error().describe().c_str()));
        if (!present || *present) candidates.push_back(pid);
    }
    for (long child : unlisted_children(vm, listed)) {
        if (child > bound) candidates.push_back(child);
    }
    if (candidates.empty()) return std::vector<Alert>{};
    // A second listing: processes born during the probe are listed now.
    auto relisted = TRY(listed_pids(vm));
    std::vector<Alert> out;
    for (long pid : candidates) {
        if (relisted.count(pid)) continue;
        std::string dir = vm.path + "/proc/" + std::to_string(pid);
        auto status_text = read_file(dir + "/status", 65536);
        auto status = status_text ? parse_pid_status(*status_text) : std::nullopt;
        if (!status || status->tgid != pid) continue;  // gone, or a thread of a listed process
        std::string cmdline;
        if (auto raw = read_file(dir + "/cmdline", 65536)) cmdline = cmdline_text(*raw);
        out.push_back(make_alert(
            "hidden-process", "critical",
            strformat("pid %ld (%s) is alive but hidden from the /proc listing", pid,
                      printable(status->name, 32).c_str()),
            {{"pid", pid}, {"name", status->name}, {"uid", status->uid}, {"cmdline", cmdline}}));
    }
    return out;
}

}  // namespace cloudvmi::apps
