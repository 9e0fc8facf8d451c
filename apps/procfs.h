// Parsers for the guest files the applications read through /vmi (proc/loadavg, proc/PID/stat,
// proc/net/tcp, etc/passwd...). Pure functions over untrusted text: a guest controls every
// byte (a process names itself "x) R 1 2", a rootkit writes what it likes), so each one
// returns nullopt or skips a line rather than guessing, and never trusts a count it reads.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cloudvmi::apps {

// The clock tick of the times in proc/PID/stat: USER_HZ, fixed at 100 in the x86 ABI.
inline constexpr double kUserHz = 100.0;
// Page size of RSS counts on x86-64.
inline constexpr uint64_t kPageSize = 4096;

struct LoadAvg {
    double load1 = 0, load5 = 0, load15 = 0;
    long running = 0, total = 0;  // scheduling entities: runnable / existing
    long last_pid = 0;            // the most recently allocated pid
};
std::optional<LoadAvg> parse_loadavg(std::string_view text);

struct MemInfo {
    uint64_t total_kib = 0, free_kib = 0, available_kib = 0;
    uint64_t swap_total_kib = 0, swap_free_kib = 0;
};
// Needs MemTotal; a missing MemAvailable (kernels before 3.14) is taken as MemFree.
std::optional<MemInfo> parse_meminfo(std::string_view text);

// proc/uptime's first field, in seconds.
std::optional<double> parse_uptime(std::string_view text);

struct PidStat {
    long pid = 0;
    std::string comm;  // as the guest named it, up to 15 bytes, any bytes but NUL
    char state = '?';
    long ppid = 0;
    uint64_t utime = 0, stime = 0;  // clock ticks
    uint64_t start_time = 0;        // clock ticks after boot
    long threads = 0;
    uint64_t vsize = 0;      // bytes
    uint64_t rss_pages = 0;  // resident pages
    uint64_t flags = 0;      // PF_* flags
    // From the kernel's own flag, not from an empty command line (any process can have one).
    bool kernel_thread() const { return (flags & 0x00200000) != 0; }  // PF_KTHREAD
};
// The comm is the text between the first '(' and the LAST ')': it may itself hold ") ".
std::optional<PidStat> parse_pid_stat(std::string_view text);

struct PidStatus {
    std::string name;
    long tgid = 0;
    uid_t uid = 0;  // real uid
};
std::optional<PidStatus> parse_pid_status(std::string_view text);

// Guest text made safe for a terminal: valid UTF-8 is kept, except C0 and C1 controls and
// DEL; those, bytes that are not UTF-8, and the backslash are escaped as \xNN. Cut at
// `max_bytes` of input ("..." then).
std::string display_text(std::string_view raw, size_t max_bytes = 4096);

// proc/PID/cmdline with its NULs as spaces, as display_text shows it, trailing NULs dropped.
std::string cmdline_text(std::string_view raw);

// A numeric proc/ entry name ("1234") as a pid; nullopt for anything else.
std::optional<long> parse_pid_name(std::string_view name);

struct Listener {
    std::string proto;    // tcp, tcp6, udp, udp6
    std::string address;  // printable: 0.0.0.0, 127.0.0.1, ::, ...
    unsigned port = 0;
    uid_t uid = 0;
    uint64_t inode = 0;
    std::string key() const { return proto + " " + address + ":" + std::to_string(port); }
};
// Listening sockets (TCP state LISTEN, UDP sockets bound unconnected) of a proc/net/{tcp,udp}[6]
// table; malformed rows are skipped.
std::vector<Listener> parse_net_listeners(std::string_view text, std::string_view proto);

// proc/modules' names, in order.
std::vector<std::string> parse_modules(std::string_view text);

// etc/passwd as uid -> name (the first name of a uid wins, as getpwuid's does).
std::map<uid_t, std::string> parse_passwd(std::string_view text);

// A user name from the guest's passwd, else the uid in decimal.
std::string user_name(const std::map<uid_t, std::string>& users, uid_t uid);

}  // namespace cloudvmi::apps
