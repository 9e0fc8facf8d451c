#include "fs/consuming_reads.h"

namespace cloudvmi::fs {

namespace {

bool ends_with(std::string_view s, std::string_view tail) {
    return s.size() >= tail.size() && s.substr(s.size() - tail.size()) == tail;
}

}  // namespace

bool consumes_on_read(std::string_view path) {
    if (path == "/proc/kmsg") return true;
    // trace_pipe and per_cpu/cpuN/trace_pipe(_raw), under tracefs wherever it is mounted
    // (/sys/kernel/tracing, /sys/kernel/debug/tracing).
    return ends_with(path, "/trace_pipe") || ends_with(path, "/trace_pipe_raw");
}

}  // namespace cloudvmi::fs
