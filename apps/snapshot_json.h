// VM snapshots as JSON (the --json output of top, ps and the exporter's debug view).
#pragma once

#include <nlohmann/json.hpp>

#include "apps/guest_snapshot.h"

namespace cloudvmi::apps {

// JSON text of `j`. Guest strings (process names, command lines, file names) may be any
// bytes; invalid UTF-8 is replaced (U+FFFD) rather than thrown on.
std::string json_text(const nlohmann::json& j, int indent = -1);

nlohmann::json process_json(const ProcessInfo& p, const MemInfo& mem);

// The summary, with `top` processes by CPU and by memory (none when 0).
nlohmann::json snapshot_json(const VmSnapshot& s, size_t top);

// Up to `n` processes, highest first by `key`.
std::vector<const ProcessInfo*> top_processes(const VmSnapshot& s, size_t n,
                                              double (*key)(const ProcessInfo&));
double by_cpu(const ProcessInfo& p);
double by_memory(const ProcessInfo& p);

}  // namespace cloudvmi::apps
