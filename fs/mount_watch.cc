#include "fs/mount_watch.h"

#include <climits>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace cloudvmi::fs {

namespace {

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string unescape(const std::string& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3') {
            out +=
                static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
            i += 3;
        } else {
            out += s[i];
        }
    }
    return out;
}

// False if mountinfo cannot be read (no fd left, no memory): then nothing is known.
template <class F>
bool for_each_mount(F f) {
    std::ifstream in("/proc/self/mountinfo");
    if (!in) return false;
    std::string line, device, mountpoint;
    while (std::getline(in, line)) {
        if (parse_mountinfo_line(line, device, mountpoint)) f(device, mountpoint);
    }
    return !in.bad();
}

}  // namespace

bool parse_mountinfo_line(const std::string& line, std::string& device, std::string& mountpoint) {
    std::istringstream fields(line);
    std::string id, parent, root, point;
    if (!(fields >> id >> parent >> device >> root >> point)) return false;
    if (device.find(':') == std::string::npos) return false;
    mountpoint = unescape(point);
    return true;
}

std::string resolve_mountpoint(const std::string& mountpoint) {
    char resolved[PATH_MAX];
    return ::realpath(mountpoint.c_str(), resolved) ? resolved : mountpoint;
}

MountWatch::MountWatch(const std::string& resolved_mountpoint) {
    // The last mount on that path is the one on top: ours.
    (void)for_each_mount([&](const std::string& device, const std::string& point) {
        if (point == resolved_mountpoint) device_ = device;
    });
}

bool MountWatch::gone() const {
    if (device_.empty()) return false;
    bool found = false;
    bool read = for_each_mount([&](const std::string& device, const std::string&) {
        if (device == device_) found = true;
    });
    return read && !found;
}

}  // namespace cloudvmi::fs
