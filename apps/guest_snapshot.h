// One VM's state as the overview, ps and the exporter show it: read from its /vmi tree in
// one pass (load, memory, uptime, kernel, and optionally every process).
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "apps/procfs.h"
#include "apps/vm_tree.h"

namespace cloudvmi::apps {

struct ProcessInfo {
    PidStat stat;
    uid_t uid = 0;
    std::string user;
    std::string cmdline;     // "" for kernel threads
    double cpu_percent = 0;  // over the sampling interval, or over the process's life
    uint64_t rss_bytes() const { return stat.rss_pages * kPageSize; }
    double cpu_seconds() const { return static_cast<double>(stat.utime + stat.stime) / kUserHz; }
    // Resident memory as a share of the guest's MemTotal (ps's %MEM).
    double memory_percent(const MemInfo& mem) const {
        return mem.total_kib ? 100.0 * static_cast<double>(rss_bytes()) /
                                   (static_cast<double>(mem.total_kib) * 1024.0)
                             : 0;
    }
};

struct VmSnapshot {
    VmRef vm;
    std::string error;  // set when the VM could not be read; the rest is then empty
    LoadAvg load;
    MemInfo mem;
    double uptime_s = 0;
    std::string kernel;        // proc/sys/kernel/osrelease
    std::string hostname;      // proc/sys/kernel/hostname
    size_t process_count = 0;  // pids in the proc/ listing
    std::vector<ProcessInfo> processes;
    bool ok() const { return error.empty(); }
};

// The pids of the VM's proc/ listing, in order.
ErrorOr<std::set<long>> listed_pids(const VmRef& vm);

// Reads the VM's summary (with the count of listed pids), and its processes when
// `with_processes`. A process that exits
// while it is read is left out. CPU percentages are over each process's life (as ps
// computes %CPU) until `add_cpu_rates` replaces them.
VmSnapshot take_snapshot(const VmRef& vm, bool with_processes);

// Snapshots of many VMs, read in parallel (up to 8 at a time); `done` is called (one call
// at a time) as each VM is read, for progress.
std::vector<VmSnapshot> take_snapshots(const std::vector<VmRef>& vms, bool with_processes,
                                       const std::function<void(const VmSnapshot&)>& done = {});

// CPU percentages of `now`'s processes over the time since `before` (the same VM, earlier).
void add_cpu_rates(const VmSnapshot& before, VmSnapshot& now);

}  // namespace cloudvmi::apps
