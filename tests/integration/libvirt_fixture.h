// A real libvirtd for the tests: Debian's daemon, started by hand with its own socket
// directory (so that it never meets a host's own libvirt clients), and busybox guests from
// the kit run by it as TCG domains.
//
// The qemu driver's state directories (/run/libvirt/qemu, /var/lib/libvirt/qemu) are the
// system's: only one such daemon may run at a time, and none of the host's. virtlogd is
// reused if one answers, else started and stopped with the daemon.
#pragma once

#include <sys/types.h>

#include <set>
#include <string>

#include "tests/integration/guest_fixture.h"

namespace cloudvmi::test {

class TestLibvirtd {
  public:
    // REQUIREs libvirtd, virtlogd, virsh and the libvirt-qemu user (scripts/install-deps.sh).
    TestLibvirtd();
    // Destroys the domains it ran, then stops the daemon(s).
    ~TestLibvirtd();
    TestLibvirtd(const TestLibvirtd&) = delete;
    TestLibvirtd& operator=(const TestLibvirtd&) = delete;

    // The connection URI (qemu:///system through this daemon's socket).
    std::string uri() const { return "qemu:///system?socket=" + dir_ + "/run/libvirt-sock"; }
    CommandResult virsh(const std::vector<std::string>& args, int timeout_ms = 60000) const;

    // The XML of a busybox guest domain named `name`; with `gdb`, its command line declares
    // a gdbstub (at gdb_socket(name)).
    std::string domain_xml(const std::string& name, bool gdb = true) const;
    // virsh create (a transient domain); REQUIREs success.
    void create(const std::string& name, bool gdb = true);
    // virsh define then start (a persistent domain, undefined at the end).
    void define_and_start(const std::string& name);
    std::string gdb_socket(const std::string& name) const { return sock_ + "/" + name + ".gdb"; }
    // A directory QEMU (as libvirt-qemu) may make sockets in: the node's gdb_dir.
    const std::string& socket_dir() const { return sock_; }
    std::string uuid(const std::string& name) const;  // virsh domuuid
    std::string serial(const std::string& name) const { return sock_ + "/" + name + ".serial"; }
    // Waits until the guest printed its ready line (its init is up).
    bool wait_ready(const std::string& name, int timeout_ms) const;
    std::string state(const std::string& name) const;  // virsh domstate --reason

  private:
    std::string dir_, sock_, kit_;
    pid_t libvirtd_ = -1;
    pid_t virtlogd_ = -1;  // -1: an existing one was reused
    std::set<std::string> domains_, defined_;
};

}  // namespace cloudvmi::test
