// The /vmi mount for real: two QEMU guests served by one kernel FUSE mount, used with the
// ordinary tools an operator would use. The test cases run in this order and share the
// mount; the last ones stop a VM and unmount.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <climits>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "common/deadline.h"
#include "common/strings.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "tests/integration/guest_fixture.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

const char kNode[] = "testnode";
// The operators group of the test mount: a number, so no group need exist on the host.
const char kOperatorsGid[] = "4242";

// Reads a file through the mount with plain syscalls; returns errno on failure.
int read_through_mount(const std::string& path, std::string* out) {
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return errno;
    std::string data;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0)
        data.append(buf, static_cast<size_t>(n));
    int err = n < 0 ? errno : 0;
    ::close(fd);
    if (out) *out = data;
    return err;
}

CommandResult sh(const std::string& script, int timeout_ms = 120000) {
    return run_command({"/bin/sh", "-c", script}, timeout_ms);
}

bool is_mounted(const std::string& mountpoint) {
    std::string mounts = read_whole_file("/proc/self/mounts");
    return mounts.find(" " + mountpoint + " fuse") != std::string::npos;
}

class MountedVmi {
  public:
    static MountedVmi& shared() {
        static std::unique_ptr<MountedVmi> m;
        if (!m) m.reset(new MountedVmi());
        return *m;
    }

    TestGuest& a() { return a_; }
    TestGuest& b() { return b_; }
    std::string vm(const char* name) const { return mountpoint_ + "/" + kNode + "/" + name; }
    const std::string& mountpoint() const { return mountpoint_; }
    const std::string& state_dir() const { return state_dir_; }
    const std::string& dir() const { return dir_; }
    std::string config_path() const { return dir_ + "/cloudvmi.yaml"; }
    pid_t mount_pid() const { return pid_; }
    std::string log() const { return read_whole_file(dir_ + "/mount.log"); }

    // Unmounts and waits for the cloudvmi process to end; true if it did in time.
    bool unmount() {
        if (pid_ <= 0) return true;
        run_command({"fusermount3", "-u", mountpoint_}, 30000);
        auto deadline = Deadline::after_ms(60000);
        while (!deadline.expired()) {
            int status = 0;
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = 0;
                return true;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        return false;
    }

    ~MountedVmi() {
        if (pid_ > 0) {
            ::kill(pid_, SIGTERM);
            ::waitpid(pid_, nullptr, 0);
        }
    }

  private:
    MountedVmi()
        : a_(TestGuest::start(config("fusea", "guest-a"))),
          b_(TestGuest::start(config("fuseb", "guest-b"))) {
        INFO("FUSE tests need /dev/fuse and fusermount3 (apt-get install fuse3)");
        REQUIRE(::access("/dev/fuse", R_OK | W_OK) == 0);
        dir_ = make_temp_dir("cloudvmi-fuse");
        // Other host users reach the mount point, so that the mount's own check is what
        // keeps them out (the access test).
        REQUIRE(::chmod(dir_.c_str(), 0755) == 0);
        mountpoint_ = dir_ + "/vmi";
        state_dir_ = dir_ + "/state";
        REQUIRE(::mkdir(mountpoint_.c_str(), 0755) == 0);
        std::ofstream(dir_ + "/cloudvmi.yaml")
            << "node: " << kNode << "\n"
            << "state_dir: " << state_dir_ << "\n"
            << "request_timeout_ms: 4000\n"
            << "audit: {file: " << dir_ << "/audit/audit.log, syslog: false}\n"
            << "operators_group: " << kOperatorsGid << "\n"
            << "vms:\n"
            << "  - name: vm-a\n    gdb: " << a_.gdb() << "\n"
            << "    qmp: " << a_.vmi_qmp() << "\n"
            << "  - name: vm-b\n    gdb: " << b_.gdb() << "\n"
            << "    qmp: " << b_.vmi_qmp() << "\n";
        // allow_other, as the man page's fstab line: the daemon itself must keep others out.
        pid_ = spawn_process({cloudvmi_binary(), "-f", "--log-level=info", "-o", "allow_other",
                              "--config", dir_ + "/cloudvmi.yaml", mountpoint_},
                             dir_ + "/mount.log");
        auto deadline = Deadline::after_ms(10000);
        while (!is_mounted(mountpoint_) && !deadline.expired()) {
            std::this_thread::sleep_for(std::chrono::milliseconds(50));
        }
        INFO("mount log:\n" << log());
        REQUIRE(is_mounted(mountpoint_));
    }

    static GuestConfig config(const char* name, const char* hostname) {
        GuestConfig c = GuestConfig::from_environment();
        c.name = name;
        c.hostname = hostname;
        return c;
    }

    TestGuest a_;
    TestGuest b_;
    std::string dir_, mountpoint_, state_dir_;
    pid_t pid_ = 0;
};

std::vector<std::string> names_in(const std::string& dir) {
    std::vector<std::string> out;
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return out;
    while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") out.push_back(n);
    }
    ::closedir(d);
    return out;
}

}  // namespace

TEST_CASE("the tree lists the node and both VMs", "[fuse]") {
    auto& m = MountedVmi::shared();
    auto nodes = names_in(m.mountpoint());
    std::sort(nodes.begin(), nodes.end());
    CHECK(nodes == std::vector<std::string>{".cloudvmi", kNode});  // the mount's own files
    auto vms = names_in(m.mountpoint() + "/" + kNode);
    std::sort(vms.begin(), vms.end());
    CHECK(vms == std::vector<std::string>{".cloudvmi", "vm-a", "vm-b"});  // the node's own
    std::string node_status = read_whole_file(m.mountpoint() + "/" + kNode + "/.cloudvmi/status");
    CHECK(node_status.find("kind: listed\nstate: connected\nvms: 2\n") != std::string::npos);
    auto inside = names_in(m.vm("vm-a"));
    std::sort(inside.begin(), inside.end());
    CHECK(inside == std::vector<std::string>{".cloudvmi", "ctl", "proc", "root", "sys"});
}

TEST_CASE("ls, cat, grep, find, stat and readlink work on two guests at once", "[fuse]") {
    auto& m = MountedVmi::shared();
    for (const char* vm : {"vm-a", "vm-b"}) {
        INFO("vm " << vm);
        std::string base = m.vm(vm);
        std::string meminfo;
        REQUIRE(read_through_mount(base + "/proc/meminfo", &meminfo) == 0);
        CHECK(starts_with(meminfo, "MemTotal:"));
        std::string loadavg;
        REQUIRE(read_through_mount(base + "/proc/loadavg", &loadavg) == 0);
        CHECK(split(loadavg, ' ').size() == 5);
        std::string status;
        REQUIRE(read_through_mount(base + "/proc/1/status", &status) == 0);
        CHECK(field_value(status, "Pid") == "1");
        std::string cmdline;
        REQUIRE(read_through_mount(base + "/proc/1/cmdline", &cmdline) == 0);
        CHECK(cmdline.find("init") != std::string::npos);
        std::string user_pid;
        REQUIRE(read_through_mount(base + "/root/run/workload/user.pid", &user_pid) == 0);
        user_pid = std::string(split(user_pid, '\n')[0]);
        std::string user_status;
        REQUIRE(read_through_mount(base + "/proc/" + user_pid + "/status", &user_status) == 0);
        CHECK(starts_with(field_value(user_status, "Uid"), "1000"));
        std::string known;
        REQUIRE(read_through_mount(base + "/root/etc/cloudvmi-known", &known) == 0);
        CHECK(known == "cloudvmi known file\n");

        // Each VM is itself: host names set differently at boot.
        auto host = sh("cat '" + base + "/proc/sys/kernel/hostname'");
        CHECK(host.out == (std::string(vm) == "vm-a" ? "guest-a\n" : "guest-b\n"));

        auto ls = sh("ls -la '" + base + "/proc'");
        REQUIRE(ls.status == 0);
        CHECK(ls.out.find(" meminfo\n") != std::string::npos);
        CHECK(ls.out.find(" self -> ") != std::string::npos);
        // Every pid directory the guest's own counter knows about (give or take the
        // heartbeat's short-lived `sleep`).
        auto pids = sh("ls '" + base + "/proc' | grep -c '^[0-9]*$'");
        auto total = parse_u64(std::string(split(std::string(split(loadavg, ' ')[3]), '/')[1]));
        REQUIRE(total);
        CHECK(std::abs(static_cast<long>(parse_u64(split(pids.out, '\n')[0]).value_or(0)) -
                       static_cast<long>(*total)) <= 3);

        auto grep = sh("grep -r . '" + base + "/proc/sys/kernel' 2>/dev/null");
        CHECK(grep.out.find("/proc/sys/kernel/hostname:" +
                            std::string(std::string(vm) == "vm-a" ? "guest-a" : "guest-b")) !=
              std::string::npos);
        CHECK(grep.out.find("/proc/sys/kernel/ostype:Linux") != std::string::npos);

        auto find = sh("find '" + base + "/sys/class/net'");
        CHECK(find.out.find("/sys/class/net/lo\n") != std::string::npos);

        struct stat st {};
        REQUIRE(::stat((base + "/proc/1/status").c_str(), &st) == 0);
        CHECK(S_ISREG(st.st_mode));
        CHECK(st.st_size == 0);  // procfs, as the guest reports it
        REQUIRE(::stat((base + "/sys/kernel/uevent_seqnum").c_str(), &st) == 0);
        CHECK(st.st_size == 4096);  // sysfs
        REQUIRE(::lstat((base + "/proc/1/exe").c_str(), &st) == 0);
        CHECK(S_ISLNK(st.st_mode));
        char target[256] = {};
        REQUIRE(::readlink((base + "/proc/1/exe").c_str(), target, sizeof target - 1) > 0);
        // The guest says /bin/busybox; shown inside the VM (see the containment test).
        CHECK(std::string(target) == "../../root/bin/busybox");

        auto tools =
            sh("tail -n 2 '" + base + "/proc/meminfo' && md5sum '" + base + "/proc/version' '" +
               base + "/proc/version' && cp '" + base + "/root/etc/cloudvmi-known' /dev/null");
        CHECK(tools.status == 0);
        auto sums = split(tools.out, '\n');
        REQUIRE(sums.size() >= 4);
        CHECK(sums[2].substr(0, 32) == sums[3].substr(0, 32));
    }
}

TEST_CASE("a big file reads whole and identically twice", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string first, second;
    REQUIRE(read_through_mount(m.vm("vm-a") + "/proc/kallsyms", &first) == 0);
    REQUIRE(read_through_mount(m.vm("vm-a") + "/proc/kallsyms", &second) == 0);
    CHECK(first.size() > 1000000);  // several MiB, handed out a page at a time by the guest
    CHECK(first == second);
    CHECK(std::count(first.begin(), first.end(), '\n') > 20000);
}

TEST_CASE("the session files describe the session", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string status, kernel, stats, json;
    REQUIRE(read_through_mount(m.vm("vm-a") + "/.cloudvmi/status", &status) == 0);
    CHECK(field_value(status, "state") == "attached");
    CHECK(std::stoll(field_value(status, "shadow_pid")) > 1);
    REQUIRE(read_through_mount(m.vm("vm-a") + "/.cloudvmi/kernel", &kernel) == 0);
    CHECK(field_value(kernel, "sysname") == "Linux");
    CHECK(field_value(kernel, "nodename") == "guest-a");
    REQUIRE(read_through_mount(m.vm("vm-a") + "/.cloudvmi/stats", &stats) == 0);
    CHECK(std::stoll(field_value(stats, "requests")) > 10);
    CHECK(!field_value(stats, "latency_p99_ms").empty());
    REQUIRE(read_through_mount(m.vm("vm-a") + "/.cloudvmi/stats.json", &json) == 0);
    auto parsed = nlohmann::json::parse(json, nullptr, false);
    REQUIRE(parsed.is_object());
    CHECK(parsed["requests"].get<int64_t>() > 10);
}

TEST_CASE("a VM its owner pauses stays paused: cat fails at once, status says why", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string b = m.vm("vm-b");
    REQUIRE(read_through_mount(b + "/proc/uptime", nullptr) == 0);
    REQUIRE(m.b().qmp("stop").find("return") != std::string::npos);
    auto start = Clock::now();
    CHECK(read_through_mount(b + "/proc/loadavg", nullptr) == EAGAIN);
    CHECK(elapsed_ms(start) < 1000);
    std::string status;
    REQUIRE(read_through_mount(b + "/.cloudvmi/status", &status) == 0);
    CHECK(field_value(status, "vm").find("stopped by someone else (paused)") == 0);
    CHECK(m.b().run_state() == "paused");
    REQUIRE(read_through_mount(m.vm("vm-a") + "/proc/uptime", nullptr) == 0);  // unaffected
    REQUIRE(m.b().qmp("cont").find("return") != std::string::npos);
    CHECK(read_through_mount(b + "/proc/loadavg", nullptr) == 0);
    REQUIRE(read_through_mount(b + "/.cloudvmi/status", &status) == 0);
    CHECK(field_value(status, "vm") == "running");
}

TEST_CASE("errors are the guest's own, and changes are refused without a policy", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string base = m.vm("vm-a");
    CHECK(read_through_mount(base + "/root/no/such/file", nullptr) == ENOENT);
    auto cat = sh("cat '" + base + "/root/etc/nonexistent'");
    CHECK(cat.status == 1);
    CHECK(cat.err.find("No such file or directory") != std::string::npos);
    auto echo = sh("echo renamed > '" + base + "/proc/sys/kernel/hostname'");
    CHECK(echo.status != 0);
    CHECK(echo.err.find("Permission denied") != std::string::npos);
    auto touch = sh("touch '" + base + "/root/tmp/new-file'");
    CHECK(touch.err.find("Permission denied") != std::string::npos);
    auto mkdir = sh("mkdir '" + base + "/root/tmp/new-dir'");
    CHECK(mkdir.err.find("Permission denied") != std::string::npos);
    auto rm = sh("rm -f '" + base + "/root/etc/cloudvmi-known'");
    CHECK(rm.err.find("Permission denied") != std::string::npos);
    // Nothing reached the guest.
    std::string host, known;
    REQUIRE(read_through_mount(base + "/proc/sys/kernel/hostname", &host) == 0);
    CHECK(host == "guest-a\n");
    CHECK(read_through_mount(base + "/root/tmp/new-file", nullptr) == ENOENT);
    REQUIRE(read_through_mount(base + "/root/etc/cloudvmi-known", &known) == 0);
}

// The canonical path of `path` (symbolic links followed by the host kernel), "" if none.
std::string resolved(const std::string& path) {
    char buf[PATH_MAX];
    return ::realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

std::string link_target(const std::string& path) {
    char buf[PATH_MAX];
    ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
    return n < 0 ? std::string("<") + std::strerror(errno) + ">" : std::string(buf, n);
}

TEST_CASE("no path leaves its VM: guest links and proc's magic links resolve inside it", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string base = m.vm("vm-a");
    std::string root = resolved(base + "/root");
    REQUIRE_FALSE(root.empty());
    std::string guest_hostname;
    REQUIRE(read_through_mount(base + "/root/etc/hostname", &guest_hostname) == 0);
    CHECK(guest_hostname == "guest-a\n");

    // Planted by the guest: an absolute link and one that climbs far above /.
    for (const char* link : {"/root/srv/absolute-link", "/root/srv/climbing-link"}) {
        INFO(link << " -> " << link_target(base + link));
        CHECK(link_target(base + link) == "../etc/hostname");
        CHECK(resolved(base + link) == root + "/etc/hostname");
        std::string through;
        CHECK(read_through_mount(base + link, &through) == 0);
        CHECK(through == guest_hostname);  // the guest's file, not the host's
    }
    // proc's magic links: the guest's /, its init's binary.
    CHECK(link_target(base + "/proc/1/root") == "../../root");
    CHECK(resolved(base + "/proc/1/root") == root);
    auto listed = names_in(base + "/proc/1/root");
    auto root_names = names_in(base + "/root");
    std::sort(listed.begin(), listed.end());
    std::sort(root_names.begin(), root_names.end());
    CHECK(listed == root_names);
    CHECK(listed != names_in("/"));
    CHECK(starts_with(resolved(base + "/proc/1/exe"), root + "/"));
    // Every link of the guest's /bin (busybox's: absolute) stays in the VM.
    int links = 0;
    for (const auto& name : names_in(base + "/root/bin")) {
        struct stat st {};
        if (::lstat((base + "/root/bin/" + name).c_str(), &st) != 0 || !S_ISLNK(st.st_mode))
            continue;
        ++links;
        INFO(name << " -> " << link_target(base + "/root/bin/" + name));
        CHECK(starts_with(resolved(base + "/root/bin/" + name), root + "/"));
    }
    CHECK(links > 10);
    // And the mount never honours a guest's setuid bit or device node.
    std::string mounts = read_whole_file("/proc/self/mounts");
    auto line_at = mounts.find(" " + m.mountpoint() + " fuse");
    REQUIRE(line_at != std::string::npos);
    std::string line = mounts.substr(line_at, mounts.find('\n', line_at) - line_at);
    INFO(line);
    CHECK(line.find("nosuid") != std::string::npos);
    CHECK(line.find("nodev") != std::string::npos);
}

TEST_CASE("only host root and the operators group use the mount, even under allow_other",
          "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string base = m.vm("vm-a");
    auto as = [&](const std::string& creds, const std::string& cmd) {
        return sh("setpriv " + creds + " -- " + cmd + " 2>&1");
    };
    const std::string nobody = "--reuid=65534 --regid=65534 --clear-groups";
    const std::string op_primary =
        std::string("--reuid=65534 --regid=") + kOperatorsGid + " --clear-groups";
    const std::string op_supplementary =
        std::string("--reuid=65534 --regid=65534 --groups=") + kOperatorsGid;
    // The mount point itself is reachable: what is refused below is refused by the mount.
    auto reach = as(nobody, "stat -c %F '" + m.mountpoint() + "/..'");
    INFO(reach.out);
    REQUIRE(reach.status == 0);
    for (const char* what : {"/proc/version", "/root/etc/shadow", "/proc/1/environ"}) {
        auto r = as(nobody, "cat '" + base + what + "'");
        INFO(what << ": " << r.out);
        CHECK(r.status != 0);
        CHECK(r.out.find("Permission denied") != std::string::npos);
    }
    auto listing = as(nobody, "ls '" + m.mountpoint() + "/" + kNode + "'");
    INFO(listing.out);
    CHECK(listing.status != 0);
    CHECK(listing.out.find("Permission denied") != std::string::npos);

    for (const auto& creds : {op_primary, op_supplementary}) {
        INFO(creds);
        auto r = as(creds, "cat '" + base + "/proc/version'");
        CHECK(r.status == 0);
        CHECK(r.out.find("Linux version") != std::string::npos);
        auto entry = as(creds, "cat '" + base + "/.cloudvmi/kernel-entry'");
        CHECK(entry.status != 0);
        CHECK(entry.out.find("Permission denied") != std::string::npos);
    }
    std::string entry;
    CHECK(read_through_mount(base + "/.cloudvmi/kernel-entry", &entry) == 0);
    CHECK(entry.find("syscall_entry: 0x") != std::string::npos);
    std::string status;
    CHECK(read_through_mount(base + "/.cloudvmi/status", &status) == 0);
    CHECK(status.find("syscall_entry") == std::string::npos);
}

TEST_CASE("reads that would take data from the guest are refused", "[fuse]") {
    auto& m = MountedVmi::shared();
    // What the guest's kernel log holds now, seen without consuming it.
    std::string before;
    REQUIRE(read_through_mount(m.vm("vm-a") + "/proc/kmsg", &before) == EACCES);
    auto r = sh("cat '" + m.vm("vm-a") + "/proc/kmsg' 2>&1");
    CHECK(r.status != 0);
    CHECK(r.out.find("Permission denied") != std::string::npos);
    CHECK(m.log().find("allow_consuming_reads") != std::string::npos);
}

TEST_CASE("a cron-style script reports every VM into one file", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string report = m.state_dir() + "/../report.txt";
    std::string script = "for vm in '" + m.mountpoint() +
                         "'/*/*/; do\n"
                         "  name=$(basename \"$vm\")\n"
                         "  load=$(cut -d' ' -f1 \"$vm/proc/loadavg\")\n"
                         "  free=$(awk '/^MemFree:/ {print $2}' \"$vm/proc/meminfo\")\n"
                         "  echo \"$name load=$load memfree_kb=$free\"\n"
                         "done > '" +
                         report + "'\n";
    auto r = sh(script);
    INFO(r.err);
    REQUIRE(r.status == 0);
    std::string text = read_whole_file(report);
    INFO("report:\n" << text);
    auto lines = split(text, '\n');
    REQUIRE(lines.size() >= 2);
    CHECK(starts_with(lines[0], "vm-a load="));
    CHECK(starts_with(lines[1], "vm-b load="));
    for (int i = 0; i < 2; ++i) {
        auto load = lines[i].substr(lines[i].find("load=") + 5);
        load = load.substr(0, load.find(' '));
        CHECK(load.find('.') != std::string::npos);  // a load average like 0.42
    }
    for (int i = 0; i < 2; ++i) {
        auto kb = std::string(lines[i].substr(lines[i].find("memfree_kb=") + 11));
        CHECK(parse_u64(kb).value_or(0) > 1000);
    }
}

TEST_CASE("ten thousand opens and closes leak no guest fd", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string base = m.vm("vm-a");
    std::string status;
    REQUIRE(read_through_mount(base + "/.cloudvmi/status", &status) == 0);
    std::string fd_dir = base + "/proc/" + field_value(status, "shadow_pid") + "/fd";
    size_t before = names_in(fd_dir).size();
    for (int i = 0; i < 10000; ++i) {
        int fd = ::open((base + "/proc/uptime").c_str(), O_RDONLY);
        REQUIRE(fd >= 0);
        ::close(fd);
    }
    std::string again;
    REQUIRE(read_through_mount(base + "/.cloudvmi/status", &again) == 0);
    CHECK(field_value(again, "shadow_pid") == field_value(status, "shadow_pid"));
    size_t after = names_in(fd_dir).size();
    CHECK(after == before);
}

// Also run with the ASan build of cloudvmi (ctest fuse_asan): a request interrupted while
// its VM is frozen, and the release of its file, must not touch freed memory.
TEST_CASE("a stopped VM answers quickly with an error while the other VM keeps working",
          "[fuse][asan]") {
    auto& m = MountedVmi::shared();
    std::string a = m.vm("vm-a"), b = m.vm("vm-b");
    REQUIRE(read_through_mount(b + "/proc/uptime", nullptr) == 0);
    REQUIRE(::kill(m.b().qemu_pid(), SIGSTOP) == 0);
    // A reader of the frozen VM: each request blocks until it fails (the mailbox engine
    // gives up on a VM that does not run within its take timeout); Ctrl-C gets it out,
    // whichever request it is in.
    pid_t blocked = ::fork();
    if (blocked == 0) {
        ::signal(SIGINT, SIG_DFL);  // not the test framework's handler
        char buf[4096];
        while (true) {
            int fd = ::open((b + "/proc/meminfo").c_str(), O_RDONLY);
            if (fd < 0) continue;
            while (::read(fd, buf, sizeof buf) > 0) {
            }
            ::close(fd);
        }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto start = Clock::now();
    for (int i = 0; i < 5; ++i)
        REQUIRE(read_through_mount(a + "/proc/uptime", nullptr) == 0);
    double a_ms = elapsed_ms(start);
    CHECK(a_ms < 3000);  // vm-a is not held up by vm-b's queue
    ::kill(blocked, SIGINT);
    auto interrupted = Clock::now();
    int status = 0;
    ::waitpid(blocked, &status, 0);
    CHECK(elapsed_ms(interrupted) < 2000);
    CHECK(WIFSIGNALED(status));
    // A request to the frozen VM fails within the configured bound instead of hanging.
    start = Clock::now();
    int err = read_through_mount(b + "/proc/loadavg", nullptr);
    double b_ms = elapsed_ms(start);
    INFO("errno " << err << " (" << std::strerror(err) << ")");
    CHECK((err == EIO || err == ENOTCONN || err == ETIMEDOUT));
    CHECK(b_ms < 15000);
    REQUIRE(::kill(m.b().qemu_pid(), SIGCONT) == 0);
    // It recovers once the VM runs again.
    bool recovered = false;
    for (int i = 0; i < 20 && !recovered; ++i) {
        recovered = read_through_mount(b + "/proc/uptime", nullptr) == 0;
        if (!recovered) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    INFO("mount log:\n" << m.log());
    CHECK(recovered);
    CHECK(m.log().find("AddressSanitizer") == std::string::npos);
}

TEST_CASE("a VM killed mid-test gives ENOTCONN and the other VM keeps working", "[fuse]") {
    auto& m = MountedVmi::shared();
    std::string a = m.vm("vm-a"), b = m.vm("vm-b");
    REQUIRE(read_through_mount(b + "/proc/uptime", nullptr) == 0);
    ::kill(m.b().qemu_pid(), SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto start = Clock::now();
    int err = read_through_mount(b + "/proc/meminfo", nullptr);
    INFO("errno " << err << " (" << std::strerror(err) << ")");
    CHECK((err == ENOTCONN || err == EIO));
    CHECK(elapsed_ms(start) < 10000);
    std::string status;
    REQUIRE(read_through_mount(b + "/.cloudvmi/status", &status) == 0);
    CHECK(field_value(status, "state") == "error");
    CHECK(read_through_mount(a + "/proc/meminfo", nullptr) == 0);
    CHECK(names_in(b).size() == 5);  // the VM directory itself is still there

    // The VM comes back (a new boot behind the same sockets): so does its directory.
    m.b().restart();
    std::string host;
    for (int i = 0; i < 40 && read_through_mount(b + "/proc/sys/kernel/hostname", &host) != 0;
         ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    CHECK(host == "guest-b\n");
    REQUIRE(read_through_mount(b + "/.cloudvmi/status", &status) == 0);
    CHECK(field_value(status, "state") == "attached");
}

TEST_CASE("fusermount3 -u ends cloudvmi and leaves no shadow in either guest", "[fuse]") {
    auto& m = MountedVmi::shared();
    REQUIRE(m.unmount());
    CHECK_FALSE(is_mounted(m.mountpoint()));
    CHECK(m.log().find("all guests detached") != std::string::npos);
    // No guardian is left behind on the host either.
    std::vector<pid_t> guards;
    for (int i = 0; i < 100; ++i) {
        guards = guardians_of(m.state_dir());
        if (guards.empty()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    CHECK(guards.empty());
    CHECK(foreign_shadows(m.a(), m.state_dir()).empty());
    CHECK(foreign_shadows(m.b(), m.state_dir()).empty());
}

TEST_CASE(
    "an fstab-style mount (mount.fuse3, type fuse.cloudvmi) serves both guests; SIGTERM unmounts",
    "[fuse]") {
    auto& m = MountedVmi::shared();
    REQUIRE_FALSE(is_mounted(m.mountpoint()));
    // mount(8) runs `mount.fuse3 cloudvmi MOUNTPOINT -t fuse.cloudvmi -o rw,OPTIONS` with
    // PATH reset to the standard directories; mount.fuse3 runs `cloudvmi SOURCE MOUNTPOINT
    // -o OPTIONS` from PATH, which cloudvmi must daemonize from. The test makes that same
    // call with the binary under test first in PATH, to leave the host's /usr/local alone.
    std::string bin = m.dir() + "/bin";
    REQUIRE((::mkdir(bin.c_str(), 0755) == 0 || errno == EEXIST));
    ::unlink((bin + "/cloudvmi").c_str());
    REQUIRE(::symlink(cloudvmi_binary().c_str(), (bin + "/cloudvmi").c_str()) == 0);
    auto mount = sh("PATH='" + bin + "':$PATH mount.fuse3 cloudvmi '" + m.mountpoint() +
                    "' -t fuse.cloudvmi -o rw,log_level=info,config=" + m.config_path());
    INFO(mount.out << mount.err);
    REQUIRE(mount.status == 0);
    REQUIRE(is_mounted(m.mountpoint()));
    auto pids = processes_with(" " + m.mountpoint() + " ");
    REQUIRE(pids.size() == 1);
    for (const char* vm : {"vm-a", "vm-b"}) {
        std::string host;
        CHECK(read_through_mount(m.vm(vm) + "/proc/sys/kernel/hostname", &host) == 0);
        CHECK(host == (std::string(vm) == "vm-a" ? "guest-a\n" : "guest-b\n"));
    }
    REQUIRE(::kill(pids[0], SIGTERM) == 0);
    bool gone = false;
    for (int i = 0; i < 300 && !gone; ++i) {
        gone = ::kill(pids[0], 0) != 0 && errno == ESRCH;
        if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(gone);
    CHECK_FALSE(is_mounted(m.mountpoint()));
    // In the background the log goes to the state directory.
    std::string log = read_whole_file(m.state_dir() + "/cloudvmi.log");
    INFO("log:\n" << log);
    CHECK(log.find("all guests detached") != std::string::npos);
    CHECK(foreign_shadows(m.a(), m.state_dir()).empty());
    CHECK(foreign_shadows(m.b(), m.state_dir()).empty());
}

TEST_CASE("the mount command's usage, version and errors", "[fuse]") {
    auto help = run_command({cloudvmi_binary(), "--help"});
    CHECK(help.status == 0);
    CHECK(help.out.find("Usage: cloudvmi [OPTIONS] MOUNTPOINT") != std::string::npos);
    CHECK(help.out.find("allow_other") != std::string::npos);  // FUSE's own options too
    auto version = run_command({cloudvmi_binary(), "--version"});
    CHECK(version.status == 0);
    CHECK(starts_with(version.out, "cloudvmi "));
    auto none = run_command({cloudvmi_binary()});
    CHECK(none.status == 2);
    CHECK(none.err.find("Usage: cloudvmi [OPTIONS] MOUNTPOINT") != std::string::npos);
    auto two_many = run_command({cloudvmi_binary(), "a", "b", "c"});
    CHECK(two_many.status == 2);
    CHECK(two_many.err.find("expected a mount point") != std::string::npos);
    auto missing =
        run_command({cloudvmi_binary(), "--config", "/nonexistent/cloudvmi.yaml", "/tmp"});
    CHECK(missing.status == 2);
    CHECK(missing.err.find("/nonexistent/cloudvmi.yaml") != std::string::npos);
    CHECK(missing.err.find("No such file or directory") != std::string::npos);
    auto& m = MountedVmi::shared();
    std::string bad = m.dir() + "/bad.yaml";
    std::ofstream(bad) << "node: n\nvms:\n  - name: x\n    gdb: nowhere\n";
    auto invalid = run_command({cloudvmi_binary(), "--config", bad, m.mountpoint()});
    CHECK(invalid.status == 2);
    CHECK(invalid.err.find(bad + ":4:") != std::string::npos);
    CHECK_FALSE(is_mounted(m.mountpoint()));
}
