// Whether the mount is still there in our own mount namespace.
//
// A mount namespace made while /vmi is mounted (libvirt makes one for each QEMU it starts)
// holds a copy of the mount. On a host whose / is a shared mount (systemd's default) the
// copy is a slave and goes with our unmount; elsewhere it keeps the FUSE connection alive
// after `umount /vmi`, and the daemon would serve that copy until the QEMU ends. The
// daemon watches its own namespace instead and ends when the mount is gone from it.
#pragma once

#include <string>

namespace cloudvmi::fs {

class MountWatch {
  public:
    // Notes the device of the mount at `resolved_mountpoint` (from /proc/self/mountinfo; no
    // request to the mount itself, which may not be served yet).
    explicit MountWatch(const std::string& resolved_mountpoint);
    // True once the mount noted at construction is no longer in this namespace.
    bool gone() const;
    bool watching() const { return !device_.empty(); }

  private:
    std::string device_;  // "major:minor" of the FUSE connection
};

// The mount point as mountinfo shows it (realpath); call before mounting on it.
std::string resolve_mountpoint(const std::string& mountpoint);

// Parses one /proc/self/mountinfo line: its "major:minor" and its (unescaped) mount point.
bool parse_mountinfo_line(const std::string& line, std::string& device, std::string& mountpoint);

}  // namespace cloudvmi::fs
