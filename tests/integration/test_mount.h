// A /vmi mount of one test guest, as node "n" with the VM named as asked, in a fresh
// directory; unmounted (and its daemon reaped) when it goes.
#pragma once

#include <sys/types.h>

#include <string>

#include "tests/integration/guest_fixture.h"

namespace cloudvmi::test {

// A whole configuration file's text, for mounts of other shapes (libvirt nodes).
// The mount point sits on a shared mount of its own (as systemd makes /): mount namespaces
// made while it is mounted (libvirt's, one per QEMU) hold slave copies, which its unmount
// reaches, so the daemon ends with it.
struct WholeConfig {
    std::string yaml;  // without audit: one in the mount's directory is added
};

struct TestMount {
    // `extra_yaml`: more top-level configuration lines (policy:, audit:...).
    TestMount(const TestGuest& guest, const std::string& vm_name,
              const std::string& extra_yaml = "", int request_timeout_ms = 10000);
    explicit TestMount(const WholeConfig& config);
    ~TestMount();
    TestMount(const TestMount&) = delete;
    TestMount& operator=(const TestMount&) = delete;

    bool mounted() const;
    // fusermount3 -u and reap; false if the daemon had to be killed.
    bool unmount();
    std::string log() const;

  private:
    void start(const std::string& yaml, bool shared);

  public:
    std::string dir;             // holds cloudvmi.yaml, mount.log and the mount point vmi/
    bool shared_parent = false;  // dir is bind-mounted on itself, shared (WholeConfig)
    std::string mnt;             // the mount point
    std::string vm;              // mnt/n/VM
    pid_t pid = -1;              // the daemon
};

}  // namespace cloudvmi::test
