#include "apps/guest_snapshot.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>

#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

constexpr size_t kMaxCmdline = 4096;

std::string first_line(const std::string& text) {
    auto line = split(text, '\n').front();
    return printable(line, 128);
}

// A process read whole, or nullopt when it went away meanwhile (or is not a process).
std::optional<ProcessInfo> read_process(const std::string& proc, long pid,
                                        const std::map<uid_t, std::string>& users,
                                        double uptime_s) {
    std::string dir = proc + "/" + std::to_string(pid);
    auto stat_text = read_file(dir + "/stat", 4096);
    auto status_text = read_file(dir + "/status", 65536);
    if (!stat_text || !status_text) return std::nullopt;
    auto stat = parse_pid_stat(*stat_text);
    auto status = parse_pid_status(*status_text);
    if (!stat || !status || stat->pid != pid) return std::nullopt;
    ProcessInfo p;
    p.stat = std::move(*stat);
    p.uid = status->uid;
    p.user = user_name(users, p.uid);
    // Only shown and matched: a guest may pad its argv to megabytes.
    if (auto raw = read_prefix(dir + "/cmdline", kMaxCmdline)) p.cmdline = cmdline_text(*raw);
    double life_s = uptime_s - static_cast<double>(p.stat.start_time) / kUserHz;
    double cpu_s = static_cast<double>(p.stat.utime + p.stat.stime) / kUserHz;
    p.cpu_percent = life_s > 0 ? 100.0 * cpu_s / life_s : 0;
    return p;
}

void read_processes(const VmRef& vm, const std::set<long>& pids, VmSnapshot& s) {
    std::map<uid_t, std::string> users;
    if (auto passwd = read_file(vm.path + "/root/etc/passwd", 1 << 20)) {
        users = parse_passwd(*passwd);
    }
    for (long pid : pids) {
        if (auto p = read_process(vm.path + "/proc", pid, users, s.uptime_s)) {
            s.processes.push_back(std::move(*p));
        }
    }
}

}  // namespace

ErrorOr<std::set<long>> listed_pids(const VmRef& vm) {
    std::set<long> pids;
    for (const auto& name : TRY(list_dir(vm.path + "/proc"))) {
        if (auto pid = parse_pid_name(name)) pids.insert(*pid);
    }
    return pids;
}

VmSnapshot take_snapshot(const VmRef& vm, bool with_processes) {
    VmSnapshot s;
    s.vm = vm;
    auto fail = [&](const Error& e) {
        VmSnapshot failed;
        failed.vm = vm;
        failed.error = e.describe();
        return failed;
    };
    auto load = read_file(vm.path + "/proc/loadavg", 4096);
    if (!load) return fail(load.error());
    auto mem = read_file(vm.path + "/proc/meminfo", 65536);
    if (!mem) return fail(mem.error());
    auto up = read_file(vm.path + "/proc/uptime", 4096);
    if (!up) return fail(up.error());
    auto l = parse_loadavg(*load);
    auto m = parse_meminfo(*mem);
    auto u = parse_uptime(*up);
    if (!l || !m || !u) return fail(Error(EPROTO, "unexpected proc/loadavg, meminfo or uptime"));
    s.load = *l;
    s.mem = *m;
    s.uptime_s = *u;
    if (auto k = read_file(vm.path + "/proc/sys/kernel/osrelease", 4096)) s.kernel = first_line(*k);
    if (auto h = read_file(vm.path + "/proc/sys/kernel/hostname", 4096)) {
        s.hostname = first_line(*h);
    }
    auto pids = listed_pids(vm);
    if (!pids) return fail(pids.error());
    s.process_count = pids->size();
    if (with_processes) read_processes(vm, *pids, s);
    return s;
}

std::vector<VmSnapshot> take_snapshots(const std::vector<VmRef>& vms, bool with_processes,
                                       const std::function<void(const VmSnapshot&)>& done) {
    // Each VM answers on its own queue in the mount, so VMs read in parallel do not wait
    // on each other; 8 bounds the threads (and the mount's load) on a big fleet.
    constexpr size_t kParallel = 8;
    std::vector<VmSnapshot> out(vms.size());
    std::atomic<size_t> next{0};
    std::mutex done_mutex;
    std::vector<std::thread> workers;
    for (size_t i = 0; i < std::min(kParallel, vms.size()); ++i) {
        workers.emplace_back([&] {
            for (size_t k; (k = next++) < vms.size();) {
                out[k] = take_snapshot(vms[k], with_processes);
                std::lock_guard lock(done_mutex);
                if (done) done(out[k]);
            }
        });
    }
    for (auto& w : workers)
        w.join();
    return out;
}

void add_cpu_rates(const VmSnapshot& before, VmSnapshot& now) {
    double elapsed = now.uptime_s - before.uptime_s;
    if (elapsed <= 0) return;
    std::map<long, const ProcessInfo*> earlier;
    for (const auto& p : before.processes)
        earlier[p.stat.pid] = &p;
    for (auto& p : now.processes) {
        auto it = earlier.find(p.stat.pid);
        // A pid reused by a new process (another start time) has no earlier sample.
        if (it == earlier.end() || it->second->stat.start_time != p.stat.start_time) continue;
        double ticks = static_cast<double>(p.stat.utime + p.stat.stime) -
                       static_cast<double>(it->second->stat.utime + it->second->stat.stime);
        p.cpu_percent = std::max(0.0, 100.0 * ticks / kUserHz / elapsed);
    }
}

}  // namespace cloudvmi::apps
