#include "apps/snapshot_json.h"

#include <algorithm>

namespace cloudvmi::apps {

std::string json_text(const nlohmann::json& j, int indent) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

double by_cpu(const ProcessInfo& p) {
    return p.cpu_percent;
}
double by_memory(const ProcessInfo& p) {
    return static_cast<double>(p.rss_bytes());
}

std::vector<const ProcessInfo*> top_processes(const VmSnapshot& s, size_t n,
                                              double (*key)(const ProcessInfo&)) {
    std::vector<const ProcessInfo*> all;
    for (const auto& p : s.processes)
        all.push_back(&p);
    std::stable_sort(all.begin(), all.end(),
                     [&](const ProcessInfo* a, const ProcessInfo* b) { return key(*a) > key(*b); });
    if (all.size() > n) all.resize(n);
    return all;
}

nlohmann::json process_json(const ProcessInfo& p, const MemInfo& mem) {
    return {{"pid", p.stat.pid},
            {"ppid", p.stat.ppid},
            {"user", p.user},
            {"uid", p.uid},
            {"state", std::string(1, p.stat.state)},
            {"comm", p.stat.comm},
            {"cmdline", p.cmdline},
            {"cpu_percent", p.cpu_percent},
            {"mem_percent", p.memory_percent(mem)},
            {"rss_bytes", p.rss_bytes()},
            {"vsize_bytes", p.stat.vsize},
            {"threads", p.stat.threads},
            {"cpu_seconds", p.cpu_seconds()},
            {"start_seconds", static_cast<double>(p.stat.start_time) / kUserHz}};
}

nlohmann::json snapshot_json(const VmSnapshot& s, size_t top) {
    nlohmann::json j = {{"node", s.vm.node}, {"vm", s.vm.name}};
    if (!s.ok()) {
        j["error"] = s.error;
        return j;
    }
    j["load"] = {s.load.load1, s.load.load5, s.load.load15};
    j["tasks"] = {{"running", s.load.running}, {"total", s.load.total}};
    j["memory"] = {{"total_bytes", s.mem.total_kib * 1024},
                   {"available_bytes", s.mem.available_kib * 1024},
                   {"free_bytes", s.mem.free_kib * 1024},
                   {"swap_total_bytes", s.mem.swap_total_kib * 1024},
                   {"swap_free_bytes", s.mem.swap_free_kib * 1024}};
    j["uptime_seconds"] = s.uptime_s;
    j["kernel"] = s.kernel;
    j["hostname"] = s.hostname;
    j["processes"] = s.process_count;
    if (top > 0 && !s.processes.empty()) {
        for (const auto* p : top_processes(s, top, by_cpu)) {
            j["top_cpu"].push_back(process_json(*p, s.mem));
        }
        for (const auto* p : top_processes(s, top, by_memory)) {
            j["top_memory"].push_back(process_json(*p, s.mem));
        }
    }
    return j;
}

}  // namespace cloudvmi::apps
