#include "tests/integration/test_mount.h"

#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace cloudvmi::test {

TestMount::TestMount(const TestGuest& guest, const std::string& vm_name,
                     const std::string& extra_yaml, int request_timeout_ms) {
    std::ostringstream yaml;
    yaml << "node: n\nstate_dir: " << guest.state_dir()
         << "\nrequest_timeout_ms: " << request_timeout_ms << "\n"
         << extra_yaml << "vms:\n  - name: " << vm_name << "\n"
         << "    gdb: " << guest.gdb() << "\n"
         << "    qmp: " << guest.vmi_qmp() << "\n";
    start(yaml.str(), false);
    vm = mnt + "/n/" + vm_name;
}

TestMount::TestMount(const WholeConfig& config) {
    start(config.yaml, true);
}

void TestMount::start(const std::string& yaml, bool shared) {
    INFO("FUSE tests need /dev/fuse and fusermount3 (apt-get install fuse3)");
    REQUIRE(::access("/dev/fuse", R_OK | W_OK) == 0);
    dir = make_temp_dir("cloudvmi-mount");
    mnt = dir + "/vmi";
    if (shared) {
        auto bound = run_command({"mount", "--bind", dir, dir});
        INFO(bound.err);
        REQUIRE(bound.status == 0);
        shared_parent = true;
        REQUIRE(run_command({"mount", "--make-shared", dir}).status == 0);
    }
    REQUIRE(::mkdir(mnt.c_str(), 0755) == 0);
    std::ofstream(dir + "/cloudvmi.yaml")
        << yaml
        << (yaml.find("audit:") == std::string::npos
                ? "audit: {file: " + dir + "/audit/audit.log, syslog: false}\n"
                : std::string());
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
    if (pid > 0 || shared_parent) (void)unmount();
}

bool TestMount::mounted() const {
    return read_whole_file("/proc/self/mounts").find(" " + mnt + " fuse") != std::string::npos;
}

bool TestMount::unmount() {
    bool clean = pid <= 0 || unmount_and_reap(mnt, pid);
    pid = -1;
    if (shared_parent) {
        (void)run_command({"umount", "-l", dir});
        shared_parent = false;
    }
    return clean;
}

std::string TestMount::log() const {
    return read_whole_file(dir + "/mount.log");
}

}  // namespace cloudvmi::test
