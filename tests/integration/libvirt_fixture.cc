#include "tests/integration/libvirt_fixture.h"

#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <thread>

#include "common/strings.h"

namespace cloudvmi::test {

namespace {

bool socket_answers(const std::string& path) {
    return run_command({"socat", "-u", "OPEN:/dev/null", "UNIX-CONNECT:" + path}, 5000).status == 0;
}

void wait_for_exit(pid_t pid, int timeout_ms) {
    auto deadline = Deadline::after_ms(timeout_ms);
    while (!deadline.expired()) {
        if (::waitpid(pid, nullptr, WNOHANG) == pid) return;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
}

}  // namespace

TestLibvirtd::TestLibvirtd() {
    for (const char* tool : {"libvirtd", "virtlogd", "virsh", "socat"}) {
        INFO("libvirt tests need " << tool << " (scripts/install-deps.sh)");
        REQUIRE_FALSE(find_in_path(tool).empty());
    }
    INFO("libvirt tests need the libvirt-qemu user (scripts/install-deps.sh creates it)");
    REQUIRE(::getpwnam("libvirt-qemu") != nullptr);
    require_guest_prerequisites();

    dir_ = make_temp_dir("cloudvmi-libvirt");
    sock_ = dir_ + "/sock";
    kit_ = dir_ + "/kit";
    // QEMU runs as libvirt-qemu: it must reach the kit and make its sockets.
    REQUIRE(::chmod(dir_.c_str(), 0755) == 0);
    REQUIRE(::mkdir((dir_ + "/run").c_str(), 0700) == 0);
    REQUIRE(::mkdir(kit_.c_str(), 0755) == 0);
    REQUIRE(::mkdir(sock_.c_str(), 0755) == 0);
    struct passwd* qemu = ::getpwnam("libvirt-qemu");
    REQUIRE(::chown(sock_.c_str(), qemu->pw_uid, qemu->pw_gid) == 0);
    auto kit =
        run_command({source_dir() + "/tests/guest/build-guest.sh", "--quiet", "--print"}, 600000);
    INFO(kit.err);
    REQUIRE(kit.status == 0);
    for (auto line : split(kit.out, '\n')) {
        for (const char* key : {"KERNEL=", "INITRD="}) {
            if (!line.starts_with(key)) continue;
            std::string target = kit_ + (key[0] == 'K' ? "/vmlinuz" : "/initrd.gz");
            REQUIRE(
                run_command({"cp", std::string(line.substr(std::strlen(key))), target}).status ==
                0);
            REQUIRE(::chmod(target.c_str(), 0644) == 0);
        }
    }

    ::mkdir("/var/log/libvirt", 0700);
    if (!socket_answers("/run/libvirt/virtlogd-sock")) {
        virtlogd_ = spawn_process({find_in_path("virtlogd")}, dir_ + "/virtlogd.log", true);
        auto deadline = Deadline::after_ms(10000);
        while (!socket_answers("/run/libvirt/virtlogd-sock") && !deadline.expired())
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    std::ofstream(dir_ + "/libvirtd.conf") << "unix_sock_dir = \"" << dir_ << "/run\"\n"
                                           << "unix_sock_rw_perms = \"0700\"\n"
                                           << "auth_unix_rw = \"none\"\n"
                                           << "auth_unix_ro = \"none\"\n";
    libvirtd_ = spawn_process({find_in_path("libvirtd"), "-f", dir_ + "/libvirtd.conf"},
                              dir_ + "/libvirtd.log", true);
    auto deadline = Deadline::after_ms(30000);
    while (virsh({"version"}, 5000).status != 0 && !deadline.expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    INFO("libvirtd log:\n" << read_whole_file(dir_ + "/libvirtd.log"));
    REQUIRE(virsh({"version"}).status == 0);
}

TestLibvirtd::~TestLibvirtd() {
    for (const auto& d : domains_)
        (void)virsh({"destroy", d}, 30000);
    for (const auto& d : defined_)
        (void)virsh({"undefine", d}, 30000);
    if (libvirtd_ > 0) {
        ::kill(libvirtd_, SIGTERM);
        wait_for_exit(libvirtd_, 15000);
    }
    if (virtlogd_ > 0) {
        ::kill(virtlogd_, SIGTERM);
        wait_for_exit(virtlogd_, 5000);
    }
}

CommandResult TestLibvirtd::virsh(const std::vector<std::string>& args, int timeout_ms) const {
    std::vector<std::string> argv = {"virsh", "-c", uri()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv, timeout_ms);
}

std::string TestLibvirtd::domain_xml(const std::string& name, bool gdb) const {
    std::string xml =
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"
        "  <name>" +
        name +
        "</name>\n"
        "  <memory unit='MiB'>256</memory>\n  <vcpu>1</vcpu>\n"
        "  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n"
        "    <kernel>" +
        kit_ +
        "/vmlinuz</kernel>\n"
        "    <initrd>" +
        kit_ +
        "/initrd.gz</initrd>\n"
        "    <cmdline>console=ttyS0 quiet panic=-1 cloudvmi.hostname=" +
        name +
        "</cmdline>\n"
        "  </os>\n"
        "  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>\n"
        "  <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n"
        "    <serial type='file'><source path='" +
        serial(name) +
        "'/><target port='0'/></serial>\n"
        "    <memballoon model='none'/>\n  </devices>\n";
    if (gdb) {
        xml +=
            "  <qemu:commandline>\n    <qemu:arg value='-gdb'/>\n"
            "    <qemu:arg value='unix:" +
            gdb_socket(name) +
            ",server=on,wait=off'/>\n"
            "  </qemu:commandline>\n";
    }
    return xml + "</domain>\n";
}

void TestLibvirtd::create(const std::string& name, bool gdb) {
    std::string path = dir_ + "/" + name + ".xml";
    std::ofstream(path) << domain_xml(name, gdb);
    auto r = virsh({"create", path});
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    domains_.insert(name);
}

void TestLibvirtd::define_and_start(const std::string& name) {
    std::string path = dir_ + "/" + name + ".xml";
    std::ofstream(path) << domain_xml(name);
    auto r = virsh({"define", path});
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    defined_.insert(name);
    r = virsh({"start", name});
    INFO(r.out << r.err);
    REQUIRE(r.status == 0);
    domains_.insert(name);
}

bool TestLibvirtd::wait_ready(const std::string& name, int timeout_ms) const {
    auto deadline = Deadline::after_ms(timeout_ms);
    while (!deadline.expired()) {
        if (read_whole_file(serial(name)).find("CLOUDVMI-GUEST-READY") != std::string::npos)
            return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
}

std::string TestLibvirtd::uuid(const std::string& name) const {
    return trimmed(virsh({"domuuid", name}).out);
}

std::string TestLibvirtd::state(const std::string& name) const {
    return trimmed(virsh({"domstate", name, "--reason"}).out);
}

}  // namespace cloudvmi::test
