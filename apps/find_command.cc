// `cloudvmi find`: processes across VMs by name, command line, user or executable hash, and
// optionally a signal to each through the VM's ctl/kill (so the mount's policy decides and
// audits it). Without --yes a signal is a dry run.
#include <regex.h>
#include <unistd.h>

#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/snapshot_json.h"
#include "common/digest.h"
#include "common/signals.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

// Executables are read whole to be hashed; beyond this they are reported, not hashed.
constexpr size_t kMaxExecutable = 256 << 20;

struct FindOptions {
    CommonOptions common;
    std::string name, cmdline, user, exe_sha256, signal;
    bool hash = false, yes = false;
};

struct Match {
    const VmSnapshot* vm;
    const ProcessInfo* process;
    std::string sha256;   // when hashed
    std::string outcome;  // for --signal: "sent", "dry run", or the error
};

// A POSIX extended regular expression. Not std::regex: libstdc++'s matcher recurses per
// character, and a guest's padded command line would overflow the stack.
class Pattern {
  public:
    explicit Pattern(const std::string& text) {
        if (int rc = ::regcomp(&re_, text.c_str(), REG_EXTENDED | REG_NOSUB); rc != 0) {
            char why[256];
            ::regerror(rc, &re_, why, sizeof why);
            throw std::invalid_argument("'" + text + "': " + why);
        }
    }
    ~Pattern() { ::regfree(&re_); }
    Pattern(const Pattern&) = delete;
    Pattern& operator=(const Pattern&) = delete;
    bool search(const std::string& s) const {
        return ::regexec(&re_, s.c_str(), 0, nullptr, 0) == 0;
    }

  private:
    regex_t re_;
};

class Finder {
  public:
    explicit Finder(const FindOptions& o) : o_(o) {
        if (!o.name.empty()) name_.emplace(o.name);
        if (!o.cmdline.empty()) cmdline_.emplace(o.cmdline);
    }

    bool matches(const VmSnapshot& s, const ProcessInfo& p, std::string* sha256) {
        if (name_ && !name_->search(p.stat.comm)) return false;
        if (cmdline_ && !cmdline_->search(p.cmdline)) return false;
        if (!o_.user.empty() && o_.user != p.user && o_.user != std::to_string(p.uid)) return false;
        if (o_.exe_sha256.empty() && !o_.hash) return true;
        *sha256 = executable_hash(s, p);
        return o_.exe_sha256.empty() || *sha256 == o_.exe_sha256;
    }

  private:
    // The executable is read through the VM's proc/PID/exe link, which the mount keeps in
    // the VM's own root/: the file at that path now (see BUGS in cloudvmi-find(1)). Hashes
    // are cached per VM and target, as many processes share one.
    std::string executable_hash(const VmSnapshot& s, const ProcessInfo& p) {
        if (p.stat.kernel_thread()) return "";
        std::string link = s.vm.path + "/proc/" + std::to_string(p.stat.pid) + "/exe";
        char target[4096];
        ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
        if (n <= 0) return "";
        std::string key = s.vm.id() + ":" + std::string(target, static_cast<size_t>(n));
        if (auto it = cache_.find(key); it != cache_.end()) return it->second;
        auto data = read_file(link, kMaxExecutable);
        return cache_[key] = data ? sha256_hex(*data) : "";
    }

    const FindOptions& o_;
    std::optional<Pattern> name_, cmdline_;
    std::map<std::string, std::string> cache_;
};

// The process is signalled only if it is still the one found: same start time (not a
// reused pid), same name and command line (not exec'd into something else since).
std::string send_signal(const Match& m, int signal) {
    std::string proc = m.vm->vm.path + "/proc/" + std::to_string(m.process->stat.pid);
    auto stat_text = read_file(proc + "/stat", 4096);
    auto stat = stat_text ? parse_pid_stat(*stat_text) : std::nullopt;
    auto cmdline = read_prefix(proc + "/cmdline", 4096);
    if (!stat || stat->start_time != m.process->stat.start_time) return "gone";
    if (stat->comm != m.process->stat.comm || !cmdline ||
        cmdline_text(*cmdline) != m.process->cmdline) {
        return "changed since found; not signalled";
    }
    auto sent = write_file(m.vm->vm.path + "/ctl/kill", std::to_string(m.process->stat.pid) + " " +
                                                            std::to_string(signal) + "\n");
    return sent ? "sent" : sent.error().describe();
}

nlohmann::json match_json(const Match& m) {
    auto j = process_json(*m.process, m.vm->mem);
    j["node"] = m.vm->vm.node;
    j["vm"] = m.vm->vm.name;
    if (!m.sha256.empty()) j["exe_sha256"] = m.sha256;
    if (!m.outcome.empty()) j["signal"] = m.outcome;
    return j;
}

int run_find(const FindOptions& o, int signal) {
    auto vms = selected_vms(o.common, "cloudvmi find");
    if (!vms) return kAppUnreachable;
    Progress progress(!o.common.quiet, vms->size());
    auto all = take_snapshots(*vms, true, [&](const VmSnapshot& s) { progress.step(s.vm.id()); });
    Finder finder(o);
    std::vector<Match> matches;
    bool unreachable = false, failed = false;
    for (const auto& s : all) {
        if (!s.ok()) {
            std::cerr << "cloudvmi find: " << s.vm.id() << ": " << s.error << "\n";
            unreachable = true;
            continue;
        }
        for (const auto& p : s.processes) {
            Match m{&s, &p, "", ""};
            if (finder.matches(s, p, &m.sha256)) matches.push_back(std::move(m));
        }
    }
    for (auto& m : matches) {
        if (signal == 0) continue;
        m.outcome = o.yes ? send_signal(m, signal) : "dry run";
        // A process that ended before its signal is what the signal was for.
        failed |= o.yes && m.outcome != "sent" && m.outcome != "gone";
    }
    nlohmann::json j = nlohmann::json::array();
    for (const auto& m : matches) {
        if (o.common.json) {
            j.push_back(match_json(m));
            continue;
        }
        std::cout << strformat("%-24s %7ld %-10s %s", m.vm->vm.id().c_str(), m.process->stat.pid,
                               display_text(m.process->user, 32).c_str(),
                               m.process->cmdline.empty()
                                   ? ("[" + display_text(m.process->stat.comm, 16) + "]").c_str()
                                   : m.process->cmdline.c_str());
        if (!m.sha256.empty()) std::cout << "  sha256:" << m.sha256;
        if (!m.outcome.empty()) std::cout << "  signal " << o.signal << ": " << m.outcome;
        std::cout << "\n";
    }
    if (o.common.json) std::cout << json_text(j, 2) << std::endl;
    if (signal != 0 && !o.yes && !matches.empty()) {
        std::cerr << "cloudvmi find: dry run: add --yes to send " << o.signal << " to "
                  << matches.size() << " process(es)\n";
    }
    if (failed) return kAppFailed;
    if (unreachable) return kAppUnreachable;
    return matches.empty() ? kAppFinding : kAppOk;
}

}  // namespace

int find_main(int argc, char** argv) {
    FindOptions o;
    CLI::App app{
        "Finds processes on every VM (or those --vm selects) by name, command line, "
        "user or executable hash; with --signal and --yes, signals each through the "
        "VM's ctl/kill, which the mount's policy governs and audits. Exit status: 0 "
        "found, 1 none found, 3 a VM unreachable, 4 a signal refused or failed.",
        "cloudvmi find"};
    add_common_options(app, o.common);
    app.add_option("--name", o.name, "extended regular expression on the process name (comm)");
    app.add_option("--cmdline", o.cmdline,
                   "extended regular expression on the command line (its first 4 KiB)");
    app.add_option("--user", o.user, "user name or uid (the guest's)");
    app.add_option("--exe-sha256", o.exe_sha256, "SHA-256 of the executable (64 hex digits)")
        ->check([](const std::string& v) {
            return v.size() == 64 && v.find_first_not_of("0123456789abcdef") == std::string::npos
                       ? ""
                       : "expected 64 lowercase hex digits";
        });
    app.add_flag("--hash", o.hash, "show each match's executable SHA-256");
    app.add_option("--signal", o.signal, "signal to send to each match (name or number)");
    app.add_flag("--yes", o.yes, "really send --signal (without it: a dry run)");
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    if (o.name.empty() && o.cmdline.empty() && o.user.empty() && o.exe_sha256.empty()) {
        std::cerr
            << "cloudvmi find: give at least one of --name, --cmdline, --user, --exe-sha256\n";
        return kAppUsage;
    }
    int signal = 0;
    if (!o.signal.empty()) {
        auto parsed = parse_signal(o.signal);
        if (!parsed) {
            std::cerr << "cloudvmi find: unknown signal '" << o.signal << "'\n";
            return kAppUsage;
        }
        signal = *parsed;
    }
    try {
        return run_find(o, signal);
    } catch (const std::invalid_argument& e) {
        std::cerr << "cloudvmi find: bad regular expression " << e.what() << "\n";
        return kAppUsage;
    }
}

}  // namespace cloudvmi::apps
