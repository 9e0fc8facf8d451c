// Changes through the real mount, governed by a real policy file and audited (issue:
// writable introspection). The busybox guest tells its own view of ip_forward on its
// serial console (tests/guest/init, the heartbeat script).
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/strings.h"
#include "tests/integration/guest_fixture.h"
#include "tests/integration/test_mount.h"

using namespace cloudvmi;
using namespace cloudvmi::test;
using Json = nlohmann::json;

namespace {

const char kPolicy[] = R"(version: 1
rules:
  - id: ip-forward
    decision: allow
    paths: [/proc/sys/net/ipv4/ip_forward]
    ops: [write]
    constraints: {values: ["0", "1"]}
  - id: swappiness
    decision: allow
    paths: [/proc/sys/vm/swappiness]
    ops: [write]
    constraints: {range: [0, 100]}
  - id: scratch-secret
    decision: deny
    paths: [/tmp/cvmi-scratch/secret]
    ops: [change]
  - id: scratch
    decision: allow
    paths: [/tmp/cvmi-scratch, /tmp/cvmi-scratch/**]
    ops: [change]
  - id: special-files
    decision: allow
    paths: [/run/workload/blocked.fifo, /proc/kmsg]
    ops: [write, chmod, truncate]
  - id: stop-user-workload
    decision: allow
    ops: [kill]
    constraints: {signals: [STOP, CONT], target_names: [cvmi-user]}
)";

// The mount the test cases share: the policy above, the audit trail in its directory.
TestMount& governed() {
    static std::unique_ptr<TestMount> m;
    if (!m) {
        auto& guest = TestGuest::shared();
        std::string dir = make_temp_dir("cloudvmi-policy");
        std::ofstream(dir + "/policy.yaml") << kPolicy;
        m = std::make_unique<TestMount>(guest, "vm",
                                        "policy: " + dir + "/policy.yaml\naudit:\n  file: " + dir +
                                            "/audit/audit.log\n  syslog: false\n");
    }
    return *m;
}

std::string policy_file(const TestMount& m) {
    std::string cfg = read_whole_file(m.dir + "/cloudvmi.yaml");
    auto at = cfg.find("policy: ");
    return cfg.substr(at + 8, cfg.find('\n', at) - at - 8);
}

std::string audit_path(const TestMount& m) {
    return policy_file(m).substr(0, policy_file(m).rfind('/')) + "/audit/audit.log";
}

std::vector<Json> audit_lines(const TestMount& m) {
    std::vector<Json> out;
    std::string all = read_whole_file(audit_path(m));
    for (auto line : split(all, '\n')) {
        if (line.empty()) continue;
        auto j = Json::parse(line, nullptr, false);
        REQUIRE_FALSE(j.is_discarded());
        out.push_back(j);
    }
    return out;
}

// open(2) + write(2) + close(2) as `echo` does it; the errno of the first failure, or 0.
int write_file(const std::string& path, const std::string& data, int flags = O_WRONLY | O_TRUNC) {
    int fd = ::open(path.c_str(), flags | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    int err = 0;
    if (::write(fd, data.data(), data.size()) != static_cast<ssize_t>(data.size())) err = errno;
    if (::close(fd) != 0 && err == 0) err = errno;
    return err;
}

std::string cat(const std::string& path) {
    return read_whole_file(path);
}

bool serial_says(const TestGuest& guest, const std::string& line, int timeout_ms) {
    auto deadline = Deadline::after_ms(timeout_ms);
    do {
        if (guest.serial_log().find(line) != std::string::npos) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    } while (!deadline.expired());
    return false;
}

CommandResult shell(const std::string& script) {
    return run_command({"/bin/sh", "-c", script}, 60000);
}

}  // namespace

TEST_CASE("policy: an allowed sysctl write reaches the guest and is audited", "[policy]") {
    auto& m = governed();
    auto& guest = TestGuest::shared();
    std::string forward = m.vm + "/proc/sys/net/ipv4/ip_forward";
    REQUIRE(trimmed(cat(forward)) == "0");
    size_t audited = audit_lines(m).size();

    REQUIRE(write_file(forward, "1\n") == 0);
    CHECK(trimmed(cat(forward)) == "1");
    CHECK(serial_says(guest, "cloudvmi-sysctl ip_forward=1", 10000));

    // An intent line, then its outcome under the same id.
    auto lines = audit_lines(m);
    REQUIRE(lines.size() == audited + 2);
    const Json& intent = lines[audited];
    const Json& outcome = lines[audited + 1];
    CHECK(intent["phase"] == "intent");
    CHECK(outcome["phase"] == "outcome");
    CHECK(intent["id"] == outcome["id"]);
    CHECK(intent["op"] == "write");
    CHECK(intent["path"] == "/proc/sys/net/ipv4/ip_forward");
    CHECK(intent["uid"] == 0);
    CHECK(intent["pid"].get<int>() > 0);
    CHECK(intent["node"] == "n");
    CHECK(intent["vm"] == "vm");
    CHECK(intent["size"] == 2);
    CHECK(intent["sha256"] ==  // printf '1\n' | sha256sum
          "4355a46b19d348dc2f57c046f8ef63d4538ebb936000f3c9ee954a27460dd865");
    CHECK(intent["decision"] == "allow");
    CHECK(intent["rule"] == "ip-forward");
    CHECK(outcome["result"] == "ok");
    CHECK(intent.contains("time"));

    REQUIRE(write_file(forward, "0\n") == 0);
    CHECK(trimmed(cat(forward)) == "0");
    CHECK(serial_says(guest, "cloudvmi-sysctl ip_forward=0", 10000));
}

TEST_CASE("policy: denied and out-of-range writes change nothing", "[policy]") {
    auto& m = governed();
    std::string swappiness = m.vm + "/proc/sys/vm/swappiness";
    std::string dirty = m.vm + "/proc/sys/vm/dirty_ratio";
    std::string before_swap = cat(swappiness), before_dirty = cat(dirty);
    REQUIRE(!before_swap.empty());
    size_t audited = audit_lines(m).size();

    CHECK(write_file(swappiness, "150\n") == EACCES);  // the rule's range is 0..100
    CHECK(write_file(swappiness, "abc\n") == EACCES);
    CHECK(write_file(dirty, "33\n") == EACCES);  // no rule: changes are denied
    CHECK(write_file(m.vm + "/proc/sys/net/ipv4/ip_forward", "2\n") == EACCES);  // not 0 or 1
    CHECK(cat(swappiness) == before_swap);
    CHECK(cat(dirty) == before_dirty);

    // One line per denied attempt, no intent.
    auto lines = audit_lines(m);
    REQUIRE(lines.size() == audited + 4);
    for (size_t i = audited; i < lines.size(); ++i) {
        CHECK(lines[i]["phase"] == "denied");
        CHECK(lines[i]["decision"] == "deny");
    }
    CHECK(lines[audited]["rule"] == "swappiness");
    CHECK(lines[audited + 2]["rule"] == "defaults");

    // Within range it goes through.
    REQUIRE(write_file(swappiness, "17\n") == 0);
    CHECK(trimmed(cat(swappiness)) == "17");
    REQUIRE(write_file(swappiness, before_swap) == 0);
}

TEST_CASE("policy: files are created, appended, renamed, chmod'ed, linked and removed",
          "[policy]") {
    auto& m = governed();
    std::string tmp = m.vm + "/root/tmp";
    std::string dir = tmp + "/cvmi-scratch";
    (void)shell("rm -rf '" + dir + "'");
    REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
    struct stat st {};
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    CHECK(S_ISDIR(st.st_mode));

    // Create, append, read back.
    REQUIRE(write_file(dir + "/notes", "one\n", O_WRONLY | O_CREAT | O_TRUNC) == 0);
    REQUIRE(write_file(dir + "/notes", "two\n", O_WRONLY | O_APPEND) == 0);
    CHECK(cat(dir + "/notes") == "one\ntwo\n");
    auto r = shell("printf 'three\\n' | tee -a '" + dir + "/notes' >/dev/null");
    CHECK(r.status == 0);
    CHECK(cat(dir + "/notes") == "one\ntwo\nthree\n");

    // cp, then sed -i (a new file, its mode copied, renamed over the old one).
    r = shell("cp '" + dir + "/notes' '" + dir + "/copy' && sed -i 's/two/TWO/' '" + dir +
              "/copy'");
    INFO(r.out << r.err);
    CHECK(r.status == 0);
    CHECK(cat(dir + "/copy") == "one\nTWO\nthree\n");

    // rename, chmod, chown, symlink.
    CHECK(::rename((dir + "/copy").c_str(), (dir + "/moved").c_str()) == 0);
    CHECK(::access((dir + "/copy").c_str(), F_OK) != 0);
    CHECK(cat(dir + "/moved") == "one\nTWO\nthree\n");
    CHECK(::chmod((dir + "/moved").c_str(), 0600) == 0);
    CHECK(::chown((dir + "/moved").c_str(), 1000, 1000) == 0);
    REQUIRE(::lstat((dir + "/moved").c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0600);
    CHECK(st.st_uid == 1000);
    CHECK(st.st_gid == 1000);
    CHECK(::symlink("moved", (dir + "/link").c_str()) == 0);
    char target[64] = {};
    CHECK(::readlink((dir + "/link").c_str(), target, sizeof target - 1) == 5);
    CHECK(std::string(target) == "moved");
    CHECK(cat(dir + "/link") == "one\nTWO\nthree\n");
    CHECK(::truncate((dir + "/moved").c_str(), 4) == 0);
    CHECK(cat(dir + "/moved") == "one\n");

    // A denied name in an allowed directory: nothing is created.
    errno = 0;
    CHECK(write_file(dir + "/secret", "x", O_WRONLY | O_CREAT) == EACCES);
    CHECK(::access((dir + "/secret").c_str(), F_OK) != 0);
    // Outside the allowed tree.
    CHECK(::mkdir((tmp + "/cvmi-elsewhere").c_str(), 0755) == -1);
    CHECK(errno == EACCES);
    CHECK(::unlink((m.vm + "/root/etc/hostname").c_str()) == -1);
    CHECK(errno == EACCES);

    // Remove everything.
    CHECK(::unlink((dir + "/link").c_str()) == 0);
    CHECK(::unlink((dir + "/moved").c_str()) == 0);
    CHECK(::unlink((dir + "/notes").c_str()) == 0);
    CHECK(::rmdir(dir.c_str()) == 0);
    CHECK(::access(dir.c_str(), F_OK) != 0);
}

TEST_CASE("policy: a guest symlink from an allowed path to a denied one is refused", "[policy]") {
    auto& m = governed();
    std::string dir = m.vm + "/root/tmp/cvmi-scratch";
    (void)shell("rm -rf '" + dir + "'");
    REQUIRE(::mkdir(dir.c_str(), 0755) == 0);
    std::string hostname_before = cat(m.vm + "/root/etc/hostname");
    REQUIRE(!hostname_before.empty());
    // An absolute guest link: the host follows it inside the VM's tree, to /etc/hostname,
    // where the policy allows nothing.
    REQUIRE(::symlink("/etc/hostname", (dir + "/hn").c_str()) == 0);
    CHECK(write_file(dir + "/hn", "hijacked\n") == EACCES);
    CHECK(cat(m.vm + "/root/etc/hostname") == hostname_before);
    CHECK(::unlink((dir + "/hn").c_str()) == 0);
    CHECK(::rmdir(dir.c_str()) == 0);
}

TEST_CASE("policy: ctl/kill signals an allowed process and refuses others", "[policy]") {
    auto& m = governed();
    std::string user_pid = trimmed(cat(m.vm + "/root/run/workload/user.pid"));
    std::string heartbeat_pid = trimmed(cat(m.vm + "/root/run/workload/heartbeat.pid"));
    REQUIRE(!user_pid.empty());
    REQUIRE(!heartbeat_pid.empty());
    std::string kill = m.vm + "/ctl/kill";
    auto state = [&](const std::string& pid) {
        return field_value(cat(m.vm + "/proc/" + pid + "/status"), "State").substr(0, 1);
    };

    REQUIRE(write_file(kill, user_pid + " STOP\n") == 0);
    CHECK(state(user_pid) == "T");
    REQUIRE(write_file(kill, user_pid + " CONT\n") == 0);
    CHECK(state(user_pid) != "T");

    // Another process, another signal: refused, nothing sent.
    CHECK(write_file(kill, heartbeat_pid + " STOP\n") == EACCES);
    CHECK(state(heartbeat_pid) != "T");
    CHECK(write_file(kill, user_pid + " KILL\n") == EACCES);
    CHECK(!state(user_pid).empty());
    CHECK(write_file(kill, "not-a-pid\n") == EINVAL);
    // cloudvmi's own process in the guest is never signalled.
    std::string shadow = field_value(cat(m.vm + "/.cloudvmi/status"), "shadow_pid");
    REQUIRE(!shadow.empty());
    CHECK(write_file(kill, shadow + " STOP\n") == EACCES);
    CHECK(write_file(kill, "999999 STOP\n") == ESRCH);
}

TEST_CASE("policy: SIGHUP with a broken policy keeps the one in force", "[policy]") {
    auto& m = governed();
    std::string file = policy_file(m);
    std::string status = m.mnt + "/.cloudvmi/policy-status";
    std::string good = read_whole_file(file);
    std::string forward = m.vm + "/proc/sys/net/ipv4/ip_forward";

    std::ofstream(file) << "version: 1\nrules:\n  - id: broken\n    decisoin: allow\n";
    REQUIRE(::kill(m.pid, SIGHUP) == 0);
    auto deadline = Deadline::after_ms(10000);
    while (cat(status).find("FAILED") == std::string::npos && !deadline.expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    INFO(cat(status));
    CHECK(cat(status).find("FAILED") != std::string::npos);
    CHECK(cat(status).find("decisoin") != std::string::npos);  // what is wrong, and where
    CHECK(m.mounted());
    // The old policy still decides.
    CHECK(write_file(forward, "0\n") == 0);
    CHECK(write_file(m.vm + "/proc/sys/vm/dirty_ratio", "33\n") == EACCES);

    // The control file reloads too; a non-root caller may not.
    std::ofstream(file) << good;
    CHECK(write_file(m.mnt + "/.cloudvmi/reload", "1\n") == 0);
    CHECK(cat(status).find("last reload: ok") != std::string::npos);
    // Under the sanitizer build (ctest guest_policy_asan): nothing reported so far.
    CHECK(m.log().find("Sanitizer") == std::string::npos);
    CHECK(m.log().find("runtime error") == std::string::npos);
}

TEST_CASE("policy: special files are never opened for a change, consuming reads stay refused",
          "[policy]") {
    auto& m = governed();
    std::string fifo = m.vm + "/root/run/workload/blocked.fifo";
    std::string blocked = trimmed(cat(m.vm + "/root/run/workload/blocked.pid"));
    REQUIRE(!blocked.empty());
    // Allowed by a rule, refused because of what the file is: the guest would have to open
    // the FIFO (or a device) to change it, and that open is itself an act on the guest.
    // (Opening it through the mount never reaches cloudvmi: the host kernel serves a FIFO
    // node as a host pipe, and the mount is nodev.)
    CHECK(::chmod(fifo.c_str(), 0600) == -1);
    CHECK(errno == EOPNOTSUPP);
    // Its reader still waits: nothing was written nor closed on its FIFO.
    auto state = field_value(cat(m.vm + "/proc/" + blocked + "/status"), "State");
    CHECK(state.substr(0, 1) == "S");
    // A write rule does not make /proc/kmsg readable through O_RDWR.
    int fd = ::open((m.vm + "/proc/kmsg").c_str(), O_RDWR);
    int err = fd < 0 ? errno : 0;
    if (fd >= 0) ::close(fd);
    CHECK(err == EACCES);
}

// Last of the [policy] cases: it kills the shared mount's daemon.
TEST_CASE("policy: a daemon killed between intent and outcome leaves the intent on record",
          "[policy]") {
    auto& m = governed();
    auto& guest = TestGuest::shared();
    std::string forward = m.vm + "/proc/sys/net/ipv4/ip_forward";
    size_t audited = audit_lines(m).size();
    // Opened while the guest runs; then a frozen QEMU holds the write between its intent
    // and its outcome.
    int fd = ::open(forward.c_str(), O_WRONLY);
    REQUIRE(fd >= 0);
    REQUIRE(::kill(guest.qemu_pid(), SIGSTOP) == 0);
    pid_t writer = ::fork();
    if (writer == 0) {
        (void)!::write(fd, "1\n", 2);
        ::_exit(0);
    }
    ::close(fd);
    auto deadline = Deadline::after_ms(10000);
    while (audit_lines(m).size() == audited && !deadline.expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::kill(m.pid, SIGKILL);
    ::waitpid(m.pid, nullptr, 0);
    ::kill(guest.qemu_pid(), SIGCONT);
    ::waitpid(writer, nullptr, 0);
    auto lines = audit_lines(m);
    REQUIRE(lines.size() == audited + 1);
    CHECK(lines.back()["phase"] == "intent");
    CHECK(lines.back()["path"] == "/proc/sys/net/ipv4/ip_forward");
    m.pid = -1;
    CHECK(run_command({"fusermount3", "-u", "-z", m.mnt}).status == 0);
}
