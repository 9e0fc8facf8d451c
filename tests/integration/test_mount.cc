#include "tests/integration/test_mount.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <thread>

namespace cloudvmi::test {

TestMount::TestMount(const TestGuest& guest, const std::string& vm_name,
                     const std::string& extra_yaml, int request_timeout_ms) {
    INFO("FUSE tests need /dev/fuse and fusermount3 (apt-get install fuse3)");
    REQUIRE(::access("/dev/fuse", R_OK | W_OK) == 0);
    dir = make_temp_dir("cloudvmi-mount");
    mnt = dir + "/vmi";
    vm = mnt + "/n/" + vm_name;
    REQUIRE(::mkdir(mnt.c_str(), 0755) == 0);
    std::ofstream(dir + "/cloudvmi.yaml")
        << "node: n\nstate_dir: " << guest.state_dir()
        << "\nrequest_timeout_ms: " << request_timeout_ms << "\n"
        << extra_yaml
        << (extra_yaml.find("audit:") == std::string::npos
                ? "audit: {file: " + dir + "/audit/audit.log, syslog: false}\n"
                : std::string())
        << "vms:\n  - name: " << vm_name << "\n"
        << "    gdb: " << guest.gdb() << "\n"
        << "    qmp: " << guest.vmi_qmp() << "\n";
    pid = spawn_process(
        {cloudvmi_binary(), "-f", "--log-level=info", "--config", dir + "/cloudvmi.yaml", mnt},
        dir + "/mount.log");
    auto deadline = Deadline::after_ms(20000);
    while (!mounted() && !deadline.expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    INFO("mount log:\n" << log());
    REQUIRE(mounted());
}

TestMount::~TestMount() {
    if (pid > 0) (void)unmount();
}

bool TestMount::mounted() const {
    return read_whole_file("/proc/self/mounts").find(" " + mnt + " fuse") != std::string::npos;
}

bool TestMount::unmount() {
    bool clean = unmount_and_reap(mnt, pid);
    pid = -1;
    return clean;
}

std::string TestMount::log() const {
    return read_whole_file(dir + "/mount.log");
}

}  // namespace cloudvmi::test
