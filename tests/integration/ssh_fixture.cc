#include "tests/integration/ssh_fixture.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <thread>

#include "common/deadline.h"
#include "common/strings.h"
#include "common/unique_fd.h"

namespace cloudvmi::test {

namespace {

// By its absolute path: sshd re-executes itself for every connection and refuses to start
// from a relative one.
constexpr const char* kSshd = "/usr/sbin/sshd";

// A TCP port on 127.0.0.1 that nothing listens on now (the kernel's pick for port 0). It
// is free again once closed, so another process may take it before sshd binds it: the
// caller retries on another.
int free_loopback_port() {
    UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(fd.valid());
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    return ntohs(addr.sin_port);
}

struct ProcStat {
    char state = '?';
    pid_t ppid = 0;
};

// A process's state and parent from /proc/PID/stat (none once it is gone).
std::optional<ProcStat> proc_stat(pid_t pid) {
    std::string stat = read_whole_file("/proc/" + std::to_string(pid) + "/stat");
    // "PID (COMM) S PPID ...": COMM may hold spaces and parentheses, the last ')' ends it.
    auto close = stat.rfind(')');
    if (close == std::string::npos || close + 4 > stat.size()) return std::nullopt;
    auto fields = split(std::string_view(stat).substr(close + 2), ' ');
    if (fields.size() < 2 || fields[0].empty()) return std::nullopt;
    auto ppid = parse_u64(fields[1]);
    if (!ppid) return std::nullopt;
    return ProcStat{fields[0][0], static_cast<pid_t>(*ppid)};
}

// Every live process's children, from one scan of /proc (zombies left out: they hold
// nothing any more).
std::map<pid_t, std::vector<pid_t>> children_by_parent() {
    std::map<pid_t, std::vector<pid_t>> children;
    DIR* d = ::opendir("/proc");
    if (d == nullptr) return children;
    while (dirent* e = ::readdir(d)) {
        auto pid = parse_u64(e->d_name);
        if (!pid) continue;
        auto st = proc_stat(static_cast<pid_t>(*pid));
        if (st && st->state != 'Z' && st->state != 'X')
            children[st->ppid].push_back(static_cast<pid_t>(*pid));
    }
    ::closedir(d);
    return children;
}

// Gone, or a zombie: either way its files, the connection's socket among them, are closed.
bool exited(pid_t pid) {
    auto st = proc_stat(pid);
    return !st || st->state == 'Z' || st->state == 'X';
}

}  // namespace

TestSshd::TestSshd() {
    INFO("ssh tests need " << kSshd << " (apt-get install openssh-server)");
    REQUIRE(::access(kSshd, X_OK) == 0);
    for (const char* tool : {"ssh", "ssh-keygen"}) {
        INFO("ssh tests need " << tool << " (apt-get install openssh-client)");
        REQUIRE_FALSE(find_in_path(tool).empty());
    }
    // sshd's privilege separation directory (its chroot before authentication), which
    // the system's ssh unit makes at boot: a machine that never ran sshd has none.
    // sshd refuses one that is group or world writable: 0755 whatever our umask.
    if (::mkdir("/run/sshd", 0755) == 0) REQUIRE(::chmod("/run/sshd", 0755) == 0);
    struct stat run_sshd {};
    INFO("sshd needs its privilege separation directory /run/sshd");
    REQUIRE((::stat("/run/sshd", &run_sshd) == 0 && S_ISDIR(run_sshd.st_mode)));

    // mkdtemp makes it 0700: the keys in it are nobody else's business.
    dir_ = make_temp_dir("cloudvmi-sshd");
    key_ = dir_ + "/client_key";
    for (const std::string& key : {dir_ + "/host_key", key_}) {
        auto r = run_command(
            {"ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cloudvmi-test", "-f", key});
        INFO(r.out << r.err);
        REQUIRE(r.status == 0);
    }
    std::string public_key = read_whole_file(key_ + ".pub");
    REQUIRE_FALSE(public_key.empty());
    std::ofstream(dir_ + "/authorized_keys") << public_key;
    REQUIRE(::chmod((dir_ + "/authorized_keys").c_str(), 0600) == 0);

    CommandResult probe;
    for (int attempt = 0; attempt < 3; ++attempt) {
        start(free_loopback_port());
        auto deadline = Deadline::after_ms(10000);
        while (true) {
            probe = ssh("true", 10000);
            if (probe.status == 0 || deadline.expired()) break;
            // Exited: most likely another process took the port before sshd could bind it.
            if (::waitpid(sshd_, nullptr, WNOHANG) == sshd_) {
                sshd_ = -1;
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        // Up, or listening but not letting us in, which another port would not change.
        if (sshd_ > 0) break;
    }
    // A failed REQUIRE leaves the constructor without the destructor: stop it here.
    if (probe.status != 0) stop_daemon();
    INFO("ssh " << host() << " true: " << probe.err << "\nsshd log (" << dir_ << "/sshd.log):\n"
                << log());
    REQUIRE(probe.status == 0);
}

TestSshd::~TestSshd() {
    // No Catch assertions in here: a destructor must not throw.
    kill_connections();
    stop_daemon();
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
}

void TestSshd::start(int port) {
    port_ = port;
    // Root by the key alone; without PAM, sshd checks the account itself. No strict modes:
    // authorized_keys lies under /tmp, which is world-writable. No AcceptEnv (nothing of
    // the client's environment reaches the commands) and no Subsystem (no sftp): the tests
    // run commands, nothing else.
    std::ofstream(dir_ + "/sshd_config") << strformat(
        "ListenAddress 127.0.0.1\n"
        "Port %d\n"
        "HostKey %s/host_key\n"
        "AuthorizedKeysFile %s/authorized_keys\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "PidFile %s/sshd.pid\n"
        "LogLevel ERROR\n"
        "PrintMotd no\n",
        port, dir_.c_str(), dir_.c_str(), dir_.c_str());
    // -D: in the foreground, our child (no daemonizing); -e: its log to stderr, our file.
    // In the test's process group, so that an interrupted test run takes it along.
    sshd_ = spawn_process({kSshd, "-D", "-e", "-f", dir_ + "/sshd_config"}, dir_ + "/sshd.log");
}

void TestSshd::stop_daemon() {
    if (sshd_ <= 0) return;
    ::kill(sshd_, SIGTERM);
    auto deadline = Deadline::after_ms(5000);
    while (::waitpid(sshd_, nullptr, WNOHANG) == 0) {
        if (deadline.expired()) {
            ::kill(sshd_, SIGKILL);
            ::waitpid(sshd_, nullptr, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    sshd_ = -1;
}

std::vector<std::string> TestSshd::client_options() const {
    // Only this key (an agent's or ~/.ssh's could use up the server's MaxAuthTries first);
    // no host key checks, for a host key new each run on a host always named 127.0.0.1.
    return {"-p", std::to_string(port_),
            "-i", key_,
            "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=5"};
}

CommandResult TestSshd::ssh(const std::string& command, int timeout_ms) const {
    std::vector<std::string> argv = {"ssh"};
    for (auto& option : client_options())
        argv.push_back(option);
    argv.push_back(host());
    argv.push_back(command);
    return run_command(argv, timeout_ms);
}

std::string TestSshd::log() const {
    return read_whole_file(dir_ + "/sshd.log");
}

int TestSshd::kill_connections() {
    if (sshd_ <= 0) return 0;
    auto children = children_by_parent();
    // The daemon forks one process per connection, which holds the connection and starts
    // the session's command. Only those go: the commands see their end of the connection
    // closed, as after a network failure, and end by themselves (a server reads EOF).
    const auto connections = children[sshd_];
    std::vector<pid_t> doomed = connections;
    for (pid_t pid : doomed)
        ::kill(pid, SIGKILL);
    auto deadline = Deadline::after_ms(5000);
    for (pid_t pid : doomed) {
        while (!exited(pid) && !deadline.expired())
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return static_cast<int>(connections.size());
}

std::string shell_quote(const std::string& s) {
    std::string quoted = "'";
    for (char c : s) {
        if (c == '\'')
            quoted += "'\\''";  // close the quote, an escaped quote, reopen
        else
            quoted += c;
    }
    return quoted + "'";
}

}  // namespace cloudvmi::test
