// `cloudvmi top` (the fleet overview) and `cloudvmi ps` (a guest's processes, as ps aux
// lists them on the host), both read from the /vmi tree only.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <thread>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/snapshot_json.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

std::string human_bytes(uint64_t bytes) {
    const char* units = "BKMGTP";
    double v = static_cast<double>(bytes);
    int u = 0;
    while (v >= 1024 && u < 5) {
        v /= 1024;
        ++u;
    }
    return u == 0 ? strformat("%lluB", static_cast<unsigned long long>(bytes))
                  : strformat(v < 10 ? "%.1f%c" : "%.0f%c", v, units[u]);
}

std::string human_duration(double seconds) {
    auto s = static_cast<long long>(seconds);
    if (s >= 86400) return strformat("%lldd%02lldh", s / 86400, s % 86400 / 3600);
    if (s >= 3600) return strformat("%lldh%02lldm", s / 3600, s % 3600 / 60);
    return strformat("%lldm%02llds", s / 60, s % 60);
}

double memory_used_percent(const MemInfo& m) {
    return m.total_kib
               ? 100.0 * static_cast<double>(m.total_kib - std::min(m.available_kib, m.total_kib)) /
                     static_cast<double>(m.total_kib)
               : 0;
}

struct TopOptions {
    CommonOptions common;
    std::string sort = "load";
    size_t top = 3;
    double interval = 2;
    bool once = false;
    int count = 0;  // refreshes on a terminal (0: until interrupted)
    double min_load = -1;
};

void sort_snapshots(std::vector<VmSnapshot>& all, const std::string& key) {
    auto value = [&](const VmSnapshot& s) -> double {
        if (key == "mem") return memory_used_percent(s.mem);
        if (key == "procs") return static_cast<double>(s.process_count);
        if (key == "uptime") return s.uptime_s;
        return s.load.load1;
    };
    std::stable_sort(all.begin(), all.end(), [&](const VmSnapshot& a, const VmSnapshot& b) {
        if (a.ok() != b.ok()) return a.ok();  // errors last
        if (key == "name") return a.vm.id() < b.vm.id();
        return value(a) > value(b);
    });
}

std::string process_column(const std::vector<const ProcessInfo*>& list, bool cpu) {
    std::string out;
    for (const auto* p : list) {
        out += strformat("  %ld %s %s", p->stat.pid, display_text(p->stat.comm, 16).c_str(),
                         cpu ? strformat("%.1f%%", p->cpu_percent).c_str()
                             : human_bytes(p->rss_bytes()).c_str());
    }
    return out;
}

std::string text_report(const std::vector<VmSnapshot>& all, const TopOptions& o) {
    std::time_t now = std::time(nullptr);
    char stamp[32];
    std::strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    size_t errors = std::count_if(all.begin(), all.end(), [](auto& s) { return !s.ok(); });
    std::string out =
        strformat("cloudvmi top - %zu VMs (%zu unreachable) - %s\n", all.size(), errors, stamp);
    out += strformat("%-24s %6s %6s %6s %5s %7s %7s %6s %8s  %s\n", "NODE/VM", "LOAD1", "LOAD5",
                     "LOAD15", "MEM%", "USED", "TOTAL", "PROCS", "UPTIME", "KERNEL");
    for (const auto& s : all) {
        if (!s.ok()) {
            out += strformat("%-24s %s\n", s.vm.id().c_str(), s.error.c_str());
            continue;
        }
        uint64_t used = (s.mem.total_kib - std::min(s.mem.available_kib, s.mem.total_kib)) * 1024;
        out += strformat("%-24s %6.2f %6.2f %6.2f %5.1f %7s %7s %6zu %8s  %s\n", s.vm.id().c_str(),
                         s.load.load1, s.load.load5, s.load.load15, memory_used_percent(s.mem),
                         human_bytes(used).c_str(), human_bytes(s.mem.total_kib * 1024).c_str(),
                         s.process_count, human_duration(s.uptime_s).c_str(), s.kernel.c_str());
        if (o.top > 0) {
            out += "    cpu:" + process_column(top_processes(s, o.top, by_cpu), true) + "\n";
            out += "    mem:" + process_column(top_processes(s, o.top, by_memory), false) + "\n";
        }
    }
    return out;
}

// Two samples `interval` apart, so that CPU percentages are current, not lifetime averages.
std::vector<VmSnapshot> sample(const std::vector<VmRef>& vms, const TopOptions& o,
                               std::vector<VmSnapshot>* previous) {
    Progress progress(!o.common.quiet && !previous, vms.size());
    auto now = take_snapshots(vms, true, [&](const VmSnapshot& s) { progress.step(s.vm.id()); });
    if (previous && previous->size() == now.size()) {
        for (size_t i = 0; i < now.size(); ++i)
            add_cpu_rates((*previous)[i], now[i]);
    }
    return now;
}

std::vector<VmSnapshot> shown(std::vector<VmSnapshot> all, const TopOptions& o) {
    if (o.min_load >= 0) {
        std::erase_if(all,
                      [&](const VmSnapshot& s) { return s.ok() && s.load.load1 < o.min_load; });
    }
    sort_snapshots(all, o.sort);
    return all;
}

int report_exit(const std::vector<VmSnapshot>& all) {
    return std::all_of(all.begin(), all.end(), [](auto& s) { return s.ok(); }) ? kAppOk
                                                                               : kAppUnreachable;
}

int run_top(const TopOptions& o) {
    auto vms = selected_vms(o.common, "cloudvmi top");
    if (!vms) return kAppUnreachable;
    auto pause = std::chrono::duration<double>(o.interval);
    bool live = !o.once && !o.common.json && ::isatty(STDOUT_FILENO) == 1;
    auto before = sample(*vms, o, nullptr);
    for (int frame = 0;; ++frame) {
        std::this_thread::sleep_for(pause);
        auto now = sample(*vms, o, &before);
        auto view = shown(now, o);
        if (o.common.json) {
            nlohmann::json j = nlohmann::json::array();
            for (const auto& s : view)
                j.push_back(snapshot_json(s, o.top));
            std::cout << json_text(j, 2) << std::endl;
        } else {
            // In place on a terminal: home, the report, clear what the last one left below.
            std::string report = text_report(view, o);
            if (live) {
                // Each line clears what a longer line of the last frame left behind.
                std::string cleared;
                for (auto line : split(report, '\n')) {
                    if (!line.empty()) cleared += std::string(line) + "\033[K\n";
                }
                report = "\033[H" + cleared + "\033[J";
            }
            std::cout << report << std::flush;
        }
        if (!live || (o.count > 0 && frame + 1 >= o.count)) return report_exit(now);
        before = std::move(now);
        // The VM list is read again, so that VMs that start or stop come and go.
        auto again = list_vms(o.common.mount, o.common.vms);
        auto ids = [](const std::vector<VmRef>& list) {
            std::vector<std::string> out;
            for (const auto& vm : list)
                out.push_back(vm.id());
            return out;
        };
        if (again && ids(*again) != ids(*vms)) {
            vms = std::move(again);
            before = sample(*vms, o, nullptr);
        }
    }
}

}  // namespace

int top_main(int argc, char** argv) {
    TopOptions o;
    CLI::App app{
        "The fleet overview: per VM load, memory, processes, uptime, kernel and the "
        "top processes by CPU and memory, read from the /vmi tree. On a terminal it "
        "refreshes in place; otherwise (cron, pipes) or with --once it prints one "
        "report.",
        "cloudvmi top"};
    add_common_options(app, o.common);
    app.add_option("-s,--sort", o.sort, "order of the VMs (highest first)")
        ->check(CLI::IsMember({"load", "mem", "procs", "uptime", "name"}))
        ->capture_default_str();
    app.add_option("-n,--top", o.top, "processes shown per VM by CPU and by memory")
        ->capture_default_str();
    app.add_option("-i,--interval", o.interval, "seconds between samples (CPU rates)")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    app.add_flag("-1,--once", o.once, "one report, then exit");
    app.add_option("-c,--count", o.count, "refreshes on a terminal, then exit (0: until ^C)");
    app.add_option("--min-load", o.min_load, "only VMs whose 1-minute load is at least this");
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    return run_top(o);
}

int ps_main(int argc, char** argv) {
    CommonOptions common;
    std::string sort = "pid";
    CLI::App app{
        "A guest's processes as `ps aux` lists them, read from the VM's /vmi tree "
        "(the host's own ps cannot: it needs the guest's pid namespace). %CPU is over "
        "each process's life, as ps computes it.",
        "cloudvmi ps"};
    add_common_options(app, common);
    std::vector<std::string> positional;
    app.add_option("vm", positional, "VMs to list (globs, as --vm)");
    app.add_option("-s,--sort", sort, "order")
        ->check(CLI::IsMember({"pid", "cpu", "mem"}))
        ->capture_default_str();
    if (int rc = parse_command_line(app, argc, argv); rc >= 0) return rc;
    common.vms.insert(common.vms.end(), positional.begin(), positional.end());
    auto vms = selected_vms(common, "cloudvmi ps");
    if (!vms) return kAppUnreachable;
    Progress progress(!common.quiet, vms->size());
    auto all = take_snapshots(*vms, true, [&](const VmSnapshot& s) { progress.step(s.vm.id()); });
    nlohmann::json j = nlohmann::json::array();
    bool many = all.size() > 1;
    if (!common.json) {
        std::printf("%s%-10s %7s %5s %5s %8s %7s %-4s %9s %s\n",
                    many ? "NODE/VM              " : "", "USER", "PID", "%CPU", "%MEM", "VSZ",
                    "RSS", "STAT", "TIME", "COMMAND");
    }
    for (auto& s : all) {
        if (!s.ok()) {
            std::fprintf(stderr, "cloudvmi ps: %s: %s\n", s.vm.id().c_str(), s.error.c_str());
            continue;
        }
        std::vector<const ProcessInfo*> order;  // snapshots list processes by pid
        for (const auto& p : s.processes)
            order.push_back(&p);
        if (sort != "pid")
            order = top_processes(s, order.size(), sort == "cpu" ? by_cpu : by_memory);
        for (const auto* p : order) {
            if (common.json) {
                auto row = process_json(*p, s.mem);
                row["node"] = s.vm.node;
                row["vm"] = s.vm.name;
                j.push_back(std::move(row));
                continue;
            }
            long cpu_s = static_cast<long>(p->cpu_seconds());
            std::string command =
                p->cmdline.empty() ? "[" + display_text(p->stat.comm, 16) + "]" : p->cmdline;
            std::printf("%s%-10s %7ld %5.1f %5.1f %8llu %7llu %-4c %6ld:%02ld %s\n",
                        many ? strformat("%-21s", s.vm.id().c_str()).c_str() : "",
                        display_text(p->user, 10).c_str(), p->stat.pid, p->cpu_percent,
                        p->memory_percent(s.mem),
                        static_cast<unsigned long long>(p->stat.vsize / 1024),
                        static_cast<unsigned long long>(p->rss_bytes() / 1024), p->stat.state,
                        cpu_s / 60, cpu_s % 60, command.c_str());
        }
    }
    if (common.json) std::cout << json_text(j, 2) << std::endl;
    return report_exit(all);
}

}  // namespace cloudvmi::apps
