#include "common/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "common/paths.h"

namespace cloudvmi::log {

namespace {

Level initial_level() {
    const char* env = std::getenv("CLOUDVMI_LOG");
    if (env == nullptr) return Level::kWarn;
    std::string s(env);
    if (s == "error") return Level::kError;
    if (s == "info") return Level::kInfo;
    if (s == "debug") return Level::kDebug;
    if (s == "trace") return Level::kTrace;
    return Level::kWarn;
}

std::atomic<int> g_level{static_cast<int>(initial_level())};
std::mutex g_write_mutex;  // keeps lines from different threads whole; guards g_output
FILE* g_output = nullptr;  // nullptr: stderr

const char* level_name(Level l) {
    switch (l) {
        case Level::kError:
            return "error";
        case Level::kWarn:
            return "warn";
        case Level::kInfo:
            return "info";
        case Level::kDebug:
            return "debug";
        case Level::kTrace:
            return "trace";
    }
    return "?";
}

}  // namespace

void set_level(Level level) {
    g_level.store(static_cast<int>(level));
}
Level level() {
    return static_cast<Level>(g_level.load());
}
bool enabled(Level l) {
    return static_cast<int>(l) <= g_level.load(std::memory_order_relaxed);
}

bool set_level_by_name(const std::string& name) {
    static const struct {
        const char* name;
        Level level;
    } table[] = {{"error", Level::kError},
                 {"warn", Level::kWarn},
                 {"info", Level::kInfo},
                 {"debug", Level::kDebug},
                 {"trace", Level::kTrace}};
    for (const auto& e : table) {
        if (name == e.name) {
            set_level(e.level);
            return true;
        }
    }
    return false;
}

void write(Level l, const char* fmt, ...) {
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    tm tmv{};
    localtime_r(&ts.tv_sec, &tmv);
    std::lock_guard lock(g_write_mutex);
    FILE* out = g_output != nullptr ? g_output : stderr;
    std::fprintf(out, "%02d:%02d:%02d.%03ld cloudvmi[%d] %s: %s\n", tmv.tm_hour, tmv.tm_min,
                 tmv.tm_sec, ts.tv_nsec / 1000000, static_cast<int>(getpid()), level_name(l), msg);
    std::fflush(out);
}

bool set_output_file(const std::string& path) {
    std::lock_guard lock(g_write_mutex);
    if (g_output != nullptr) std::fclose(g_output);
    g_output = nullptr;
    if (path.empty()) return true;
    // Logs live in the private state directory: never written through a link.
    auto fd = open_private_file(path, O_WRONLY | O_APPEND | O_CREAT);
    if (!fd) return false;
    g_output = ::fdopen(fd->get(), "a");
    if (g_output != nullptr) (void)fd->release();
    return g_output != nullptr;
}

}  // namespace cloudvmi::log
