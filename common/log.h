// Leveled logging to stderr, safe from any thread.
//
// The level comes from CLOUDVMI_LOG (error, warn, info, debug, trace) or the command line.
#pragma once

#include <string>

namespace cloudvmi::log {

enum class Level { kError = 0, kWarn, kInfo, kDebug, kTrace };

void set_level(Level level);
Level level();
// Accepts the names above; returns false for an unknown name.
bool set_level_by_name(const std::string& name);
bool enabled(Level level);

void write(Level level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

// Sends log lines to a file (appending) instead of stderr; "" restores stderr.
bool set_output_file(const std::string& path);

}  // namespace cloudvmi::log

#define CVMI_LOG(lvl, ...)                                                           \
    do {                                                                             \
        if (::cloudvmi::log::enabled(lvl)) ::cloudvmi::log::write(lvl, __VA_ARGS__); \
    } while (0)
#define LOG_ERROR(...) CVMI_LOG(::cloudvmi::log::Level::kError, __VA_ARGS__)
#define LOG_WARN(...) CVMI_LOG(::cloudvmi::log::Level::kWarn, __VA_ARGS__)
#define LOG_INFO(...) CVMI_LOG(::cloudvmi::log::Level::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) CVMI_LOG(::cloudvmi::log::Level::kDebug, __VA_ARGS__)
#define LOG_TRACE(...) CVMI_LOG(::cloudvmi::log::Level::kTrace, __VA_ARGS__)
