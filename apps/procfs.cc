#include "apps/procfs.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

template <class T>
bool parse_number(std::string_view text, T* out, int base = 10) {
    if constexpr (std::is_floating_point_v<T>) {
        auto v = parse_double(text);  // "inf" and "nan" are no load
        if (v) *out = *v;
        return v.has_value();
    } else {
        const char* end = text.data() + text.size();
        auto r = std::from_chars(text.data(), end, *out, base);
        return !text.empty() && r.ec == std::errc() && r.ptr == end;
    }
}

// "1/93" -> 1, 93
bool parse_ratio(std::string_view text, long* a, long* b) {
    auto slash = text.find('/');
    return slash != std::string_view::npos && parse_number(text.substr(0, slash), a) &&
           parse_number(text.substr(slash + 1), b);
}

// The hex address of a proc/net table ("0100007F" or 32 digits for IPv6) as text.
std::optional<std::string> net_address(std::string_view hex) {
    uint8_t bytes[16];
    size_t words = hex.size() / 8;
    if ((words != 1 && words != 4) || hex.size() % 8 != 0) return std::nullopt;
    // Each 32-bit word is printed as the host (little-endian) value of network-order bytes.
    for (size_t w = 0; w < words; ++w) {
        uint32_t value = 0;
        if (!parse_number(hex.substr(w * 8, 8), &value, 16)) return std::nullopt;
        std::memcpy(bytes + w * 4, &value, 4);
    }
    char text[INET6_ADDRSTRLEN];
    if (!inet_ntop(words == 1 ? AF_INET : AF_INET6, bytes, text, sizeof text)) return std::nullopt;
    return std::string(text);
}

}  // namespace

std::optional<LoadAvg> parse_loadavg(std::string_view text) {
    auto f = split_fields(split(text, '\n').front());
    LoadAvg l;
    if (f.size() != 5 || !parse_number(f[0], &l.load1) || !parse_number(f[1], &l.load5) ||
        !parse_number(f[2], &l.load15) || !parse_ratio(f[3], &l.running, &l.total) ||
        !parse_number(f[4], &l.last_pid)) {
        return std::nullopt;
    }
    return l;
}

std::optional<MemInfo> parse_meminfo(std::string_view text) {
    MemInfo m;
    bool total = false, available = false;
    const std::pair<std::string_view, uint64_t*> keys[] = {{"MemTotal:", &m.total_kib},
                                                           {"MemFree:", &m.free_kib},
                                                           {"MemAvailable:", &m.available_kib},
                                                           {"SwapTotal:", &m.swap_total_kib},
                                                           {"SwapFree:", &m.swap_free_kib}};
    for (auto line : split(text, '\n')) {
        auto f = split_fields(line);
        if (f.size() < 2) continue;
        for (auto& [key, slot] : keys) {
            if (f[0] != key || !parse_number(f[1], slot)) continue;
            total |= key == "MemTotal:";
            available |= key == "MemAvailable:";
        }
    }
    if (!total) return std::nullopt;
    if (!available) m.available_kib = m.free_kib;
    return m;
}

std::optional<double> parse_uptime(std::string_view text) {
    auto f = split_fields(split(text, '\n').front());
    double v = 0;
    if (f.empty() || !parse_number(f[0], &v) || v < 0) return std::nullopt;
    return v;
}

std::optional<PidStat> parse_pid_stat(std::string_view text) {
    auto open = text.find('(');
    auto close = text.rfind(')');
    if (open == std::string_view::npos || close == std::string_view::npos || close < open) {
        return std::nullopt;
    }
    PidStat s;
    auto head = split_fields(text.substr(0, open));
    if (head.size() != 1 || !parse_number(head[0], &s.pid)) return std::nullopt;
    s.comm = std::string(text.substr(open + 1, close - open - 1));
    // Fields after the comm, numbered as proc(5) numbers them from 3 (state).
    auto f = split_fields(split(text.substr(close + 1), '\n').front());
    if (f.size() < 22 || f[0].size() != 1) return std::nullopt;
    s.state = f[0][0];
    int64_t rss = 0;
    if (!parse_number(f[1], &s.ppid) || !parse_number(f[11], &s.utime) ||
        !parse_number(f[12], &s.stime) || !parse_number(f[17], &s.threads) ||
        !parse_number(f[19], &s.start_time) || !parse_number(f[20], &s.vsize) ||
        !parse_number(f[21], &rss) || !parse_number(f[6], &s.flags)) {
        return std::nullopt;
    }
    s.rss_pages = rss > 0 ? static_cast<uint64_t>(rss) : 0;
    return s;
}

std::optional<PidStatus> parse_pid_status(std::string_view text) {
    PidStatus s;
    bool tgid = false, uid = false, name = false;
    for (auto line : split(text, '\n')) {
        auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        auto key = line.substr(0, colon);
        auto f = split_fields(line.substr(colon + 1));
        if (key == "Name") {
            // The name is tab-separated and may hold spaces: take the rest of the line.
            auto rest = line.substr(colon + 1);
            while (!rest.empty() && (rest.front() == '\t' || rest.front() == ' ')) {
                rest.remove_prefix(1);
            }
            s.name = std::string(rest);
            name = true;
        } else if (key == "Tgid" && f.size() == 1) {
            tgid = parse_number(f[0], &s.tgid);
        } else if (key == "Uid" && !f.empty()) {
            uid = parse_number(f[0], &s.uid);
        }
    }
    if (!tgid || !uid || !name) return std::nullopt;
    return s;
}

namespace {

// The length of the valid UTF-8 sequence at the start of `s` and its code point; 0 when
// it is not one (overlong forms and surrogates included).
size_t utf8_sequence(std::string_view s, uint32_t* cp) {
    auto b = [&](size_t i) { return static_cast<unsigned char>(s[i]); };
    size_t len = b(0) < 0x80           ? 1
                 : (b(0) >> 5) == 0x6  ? 2
                 : (b(0) >> 4) == 0xe  ? 3
                 : (b(0) >> 3) == 0x1e ? 4
                                       : 0;
    if (len == 0 || len > s.size()) return 0;
    *cp = len == 1 ? b(0) : b(0) & (0x7f >> len);
    for (size_t i = 1; i < len; ++i) {
        if ((b(i) & 0xc0) != 0x80) return 0;
        *cp = (*cp << 6) | (b(i) & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (*cp < kMin[len] || *cp > 0x10ffff || (*cp >= 0xd800 && *cp <= 0xdfff)) return 0;
    return len;
}

}  // namespace

std::string display_text(std::string_view raw, size_t max_bytes) {
    std::string out;
    std::string_view rest = raw.substr(0, max_bytes);
    while (!rest.empty()) {
        uint32_t cp = 0;
        size_t len = utf8_sequence(rest, &cp);
        bool control = cp < 0x20 || cp == 0x7f || (cp >= 0x80 && cp < 0xa0) || cp == '\\';
        if (len == 0 || control) {
            out += strformat("\\x%02x", static_cast<unsigned char>(rest[0]));
            rest.remove_prefix(1);
        } else {
            out.append(rest.substr(0, len));
            rest.remove_prefix(len);
        }
    }
    if (raw.size() > max_bytes) out += "...";
    return out;
}

std::string cmdline_text(std::string_view raw) {
    while (!raw.empty() && raw.back() == '\0')
        raw.remove_suffix(1);
    std::string spaced(raw);
    std::replace(spaced.begin(), spaced.end(), '\0', ' ');
    return display_text(spaced);
}

std::optional<long> parse_pid_name(std::string_view name) {
    long pid = 0;
    if (name.empty() || name.size() > 10 || name[0] == '0' || !parse_number(name, &pid) ||
        pid <= 0) {
        return std::nullopt;
    }
    return pid;
}

std::vector<Listener> parse_net_listeners(std::string_view text, std::string_view proto) {
    // TCP_LISTEN is 0x0A; an unconnected UDP socket sits in TCP_CLOSE (0x07).
    const bool udp = starts_with(proto, "udp");
    std::vector<Listener> out;
    bool header = true;
    for (auto line : split(text, '\n')) {
        if (header) {  // "  sl  local_address rem_address   st ..."
            header = false;
            continue;
        }
        auto f = split_fields(line);
        if (f.size() < 10) continue;
        if (f[3] != (udp ? "07" : "0A")) continue;
        auto colon = f[1].find(':');
        if (colon == std::string_view::npos) continue;
        Listener l;
        l.proto = std::string(proto);
        auto address = net_address(f[1].substr(0, colon));
        if (!address || !parse_number(f[1].substr(colon + 1), &l.port, 16) || l.port > 65535 ||
            !parse_number(f[7], &l.uid) || !parse_number(f[9], &l.inode)) {
            continue;
        }
        l.address = *address;
        out.push_back(std::move(l));
    }
    return out;
}

std::vector<std::string> parse_modules(std::string_view text) {
    std::vector<std::string> out;
    for (auto line : split(text, '\n')) {
        auto f = split_fields(line);
        if (!f.empty()) out.emplace_back(f[0]);
    }
    return out;
}

std::map<uid_t, std::string> parse_passwd(std::string_view text) {
    std::map<uid_t, std::string> users;
    for (auto line : split(text, '\n')) {
        auto f = split(line, ':');
        uid_t uid = 0;
        if (f.size() < 3 || f[0].empty() || !parse_number(f[2], &uid)) continue;
        users.emplace(uid, std::string(f[0]));
    }
    return users;
}

std::string user_name(const std::map<uid_t, std::string>& users, uid_t uid) {
    auto it = users.find(uid);
    return it != users.end() ? printable(it->second, 32) : std::to_string(uid);
}

}  // namespace cloudvmi::apps
