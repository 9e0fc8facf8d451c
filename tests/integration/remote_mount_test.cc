// A node on another host (issue 11): the mount reaches it through real ssh (an sshd the
// test starts on loopback), where `cloudvmi serve --stdio` serves the guest under that
// host's own configuration, policy and audit trail.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <thread>

#include "common/deadline.h"
#include "tests/integration/ssh_fixture.h"
#include "tests/integration/test_mount.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

const char kRemotePolicy[] = R"(version: 1
rules:
  - id: remote-scratch
    decision: allow
    paths: [/tmp/cvmi-remote, /tmp/cvmi-remote/**]
    ops: [change]
)";

std::string yaml_list(const std::vector<std::string>& items) {
    std::string out = "[";
    for (size_t i = 0; i < items.size(); ++i)
        out += (i ? ", " : "") + std::string("\"") + items[i] + "\"";
    return out + "]";
}

// The remote host's side: its configuration (the guest, hand-listed as node "far-host"),
// policy and audit trail, in a directory of its own.
std::string remote_config(const TestGuest& guest, const std::string& dir) {
    std::ofstream(dir + "/policy.yaml") << kRemotePolicy;
    std::ofstream(dir + "/remote.yaml")
        << "node: far-host\nstate_dir: " << dir << "/state\nrequest_timeout_ms: 20000\n"
        << "policy: " << dir << "/policy.yaml\n"
        << "audit: {file: " << dir << "/audit.log, syslog: false}\n"
        << "vms:\n  - name: g\n    gdb: " << guest.gdb() << "\n";
    return dir + "/remote.yaml";
}

}  // namespace

TEST_CASE(
    "ssh node: a VM of another host, served over real ssh, read, changed, dropped and "
    "back",
    "[ssh]") {
    auto& guest = TestGuest::shared();
    TestSshd sshd;
    std::string remote_dir = make_temp_dir("cloudvmi-remote");
    std::string remote_yaml = remote_config(guest, remote_dir);
    std::vector<std::string> options = sshd.client_options();
    TestMount m(WholeConfig{"node: here\nstate_dir: " + remote_dir +
                            "/local-state\nnodes:\n  - name: far\n    ssh: " + sshd.host() +
                            "\n    ssh_options: " + yaml_list(options) +
                            "\n    remote_command: " + std::string(CLOUDVMI_BINARY) +
                            " serve --stdio --config " + remote_yaml + "\n"});
    REQUIRE(m.mounted());
    std::string far = m.mnt + "/far";

    // The remote host's listing, with the mount's own .cloudvmi beside it.
    auto ls = run_command({"ls", "-A", far});
    REQUIRE(ls.status == 0);
    CHECK(ls.out == ".cloudvmi\ng\n");
    auto version = cat_until_ok(far + "/g/proc/version", 90000);
    REQUIRE(version.status == 0);
    CHECK_THAT(version.out, Catch::StartsWith("Linux version " + guest.kernel_version()));
    auto status = run_command({"cat", far + "/.cloudvmi/status"}).out;
    INFO(status);
    CHECK(field_value(status, "kind") == "ssh");
    CHECK(field_value(status, "state") == "connected");
    CHECK(field_value(status, "remote_node") == "far-host");
    CHECK(field_value(status, "vms") == "1");
    CHECK(run_command({"cat", m.mnt + "/.cloudvmi/nodes"}).out.find("node: far") !=
          std::string::npos);

    SECTION("the remote host's policy decides changes, and its audit trail records them") {
        std::string scratch = far + "/g/root/tmp/cvmi-remote";
        run_command({"rm", "-rf", scratch});
        REQUIRE(run_command({"mkdir", scratch}).status == 0);
        REQUIRE(run_command({"sh", "-c", "echo through-ssh > " + scratch + "/note"}).status == 0);
        CHECK(run_command({"cat", scratch + "/note"}).out == "through-ssh\n");
        auto denied = run_command({"sh", "-c", "echo no > " + far + "/g/root/tmp/cvmi-denied"});
        CHECK(denied.status != 0);
        CHECK_THAT(denied.err, Catch::Contains("Permission denied"));
        auto audit = read_whole_file(remote_dir + "/audit.log");
        CHECK_THAT(audit, Catch::Contains("/tmp/cvmi-remote/note"));
        CHECK_THAT(audit, Catch::Contains("remote-scratch"));
        // The caller as the mounting host saw it: its name for the process, and the host.
        CHECK_THAT(audit, Catch::Contains("\"comm\":\"sh\""));
        CHECK_THAT(audit, Catch::Contains("\"host\":"));
        CHECK(run_command({"rm", "-r", scratch}).status == 0);
    }

    SECTION("a dropped connection fails the request in flight with EIO, then recovers") {
        // A file open across the drop: its handle lived on the old connection.
        int held = ::open((far + "/g/proc/kallsyms").c_str(), O_RDONLY);
        REQUIRE(held >= 0);
        char first[4096];
        REQUIRE(::read(held, first, sizeof first) == static_cast<ssize_t>(sizeof first));

        // The server stopped, a request waits for its answer: in flight, deterministically.
        // The server, not the mount's ssh client (whose command line names it too).
        auto pgrep = run_command(
            {"pgrep", "-f",
             "^" + std::string(CLOUDVMI_BINARY) + " serve --stdio --config " + remote_yaml});
        REQUIRE(pgrep.status == 0);
        pid_t server = static_cast<pid_t>(std::stol(pgrep.out));
        // Their lookups are cached first (for a second): the kernel makes concurrent
        // lookups of one name wait for each other, the opens are separate requests.
        const std::vector<std::string> files = {"uptime", "loadavg", "version"};
        std::vector<std::string> stat_files = {"stat"};
        for (const auto& f : files)
            stat_files.push_back(far + "/g/proc/" + f);
        REQUIRE(run_command(stat_files).status == 0);
        REQUIRE(::kill(server, SIGSTOP) == 0);
        // Three readers at once: three requests in flight on the one connection.
        std::vector<pid_t> cats;
        for (const auto& f : files)
            cats.push_back(spawn_process({"/bin/cat", far + "/g/proc/" + f},
                                         remote_dir + "/in-flight-" + f + ".log"));
        auto deadline = Deadline::after_ms(5000);  // within the requests' own timeout
        std::string before;
        while (!deadline.expired()) {
            before = run_command({"cat", far + "/.cloudvmi/status"}).out;
            if (field_value(before, "in_flight") == "3") break;
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        CHECK(field_value(before, "in_flight") == "3");
        // The connection goes as in a network failure: the server sees its end closed.
        CHECK(sshd.kill_connections() >= 1);
        ::kill(server, SIGCONT);
        for (size_t i = 0; i < cats.size(); ++i) {
            INFO(files[i]);
            int wstatus = 0;
            deadline = Deadline::after_ms(15000);
            while (::waitpid(cats[i], &wstatus, WNOHANG) == 0 && !deadline.expired())
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            if (deadline.expired()) ::kill(cats[i], SIGKILL), ::waitpid(cats[i], &wstatus, 0);
            CHECK(WIFEXITED(wstatus));
            CHECK(WEXITSTATUS(wstatus) != 0);
            CHECK_THAT(read_whole_file(remote_dir + "/in-flight-" + files[i] + ".log"),
                       Catch::Contains("Input/output error"));
        }

        // Later requests succeed once ssh is back (the old serve may still be detaching).
        auto again = cat_until_ok(far + "/g/proc/version", 120000);
        CHECK(again.status == 0);
        auto after = run_command({"cat", far + "/.cloudvmi/status"}).out;
        INFO(after);
        CHECK(field_value(after, "state") == "connected");
        CHECK(field_value(after, "drops") == "1");
        CHECK(field_value(after, "connects") == "2");
        // The file opened before the drop is gone with its connection: EIO, never another
        // file that a new connection's handle of the same number would name.
        char later[4096];
        CHECK(::pread(held, later, sizeof later, 1 << 20) == -1);
        CHECK(errno == EIO);
        ::close(held);
    }
}
