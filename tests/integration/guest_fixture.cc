#include "tests/integration/guest_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

// Listeners need the external interfaces.
#define CATCH_CONFIG_EXTERNAL_INTERFACES
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <regex>
#include <sstream>
#include <thread>

#include "common/deadline.h"
#include "common/strings.h"
#include "common/unique_fd.h"
#include "redirector/journal/recovery_log.h"

namespace cloudvmi::test {

namespace {

// Boots after the first one when a guest kernel dies while booting (see TestGuest::boot).
constexpr int kBootRetries = 2;

// Checks `done` every 100 ms until it holds or `timeout_ms` passes; whether it held.
bool poll_until(const std::function<bool()>& done, int timeout_ms) {
    auto deadline = Deadline::after_ms(timeout_ms);
    while (!done()) {
        if (deadline.expired()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return true;
}

std::string env_or(const char* name, const std::string& fallback) {
    const char* v = std::getenv(name);
    return (v != nullptr && *v != '\0') ? std::string(v) : fallback;
}

bool executable(const std::string& path) {
    return ::access(path.c_str(), X_OK) == 0;
}

}  // namespace

std::string find_in_path(const std::string& prog) {
    // Daemons live in sbin, which a non-login PATH may lack.
    std::string path = env_or("PATH", "/usr/bin:/bin") + ":/usr/sbin:/sbin";
    for (auto dir : split(path, ':')) {
        std::string candidate = std::string(dir) + "/" + prog;
        if (executable(candidate)) return candidate;
    }
    return "";
}

std::string GuestConfig::describe() const {
    return strformat("%s image, %s %s kernel, %d vCPU%s, cmdline '%s'", image.c_str(),
                     release.c_str(), flavour.c_str(), smp, smp == 1 ? "" : "s", append.c_str());
}

GuestConfig GuestConfig::from_environment() {
    GuestConfig c;
    c.flavour = env_or("CLOUDVMI_TEST_FLAVOUR", "generic");
    c.release = env_or("CLOUDVMI_TEST_RELEASE", "bookworm");
    c.append = env_or("CLOUDVMI_TEST_APPEND", "");
    c.smp = static_cast<int>(parse_u64(env_or("CLOUDVMI_TEST_SMP", "1")).value_or(1));
    c.image = env_or("CLOUDVMI_TEST_IMAGE", "busybox");
    return c;
}

std::string source_dir() {
    return CLOUDVMI_SOURCE_DIR;
}
// CLOUDVMI_TEST_BINARY runs the tests against another build (the sanitizer one, say).
std::string cloudvmi_binary() {
    return env_or("CLOUDVMI_TEST_BINARY", CLOUDVMI_BINARY);
}

std::string make_temp_dir(const std::string& prefix) {
    std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    char* dir = ::mkdtemp(buf.data());
    REQUIRE(dir != nullptr);
    return dir;
}

void require_guest_prerequisites() {
    INFO(
        "guest tests need qemu-system-x86_64 (apt-get install qemu-system-x86); "
        "run scripts/install-deps.sh");
    REQUIRE_FALSE(find_in_path("qemu-system-x86_64").empty());
    INFO("the guest kit is missing: " + source_dir() + "/tests/guest/launch-guest.sh");
    REQUIRE(executable(source_dir() + "/tests/guest/launch-guest.sh"));
    INFO("the cloudvmi binary under test is missing: " + cloudvmi_binary());
    REQUIRE(executable(cloudvmi_binary()));
}

CommandResult cat_until_ok(const std::string& path, int timeout_ms) {
    auto deadline = Deadline::after_ms(timeout_ms);
    CommandResult r;
    while (!deadline.expired()) {
        r = run_command({"cat", path}, 60000);
        if (r.status == 0) return r;
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
    return r;
}

CommandResult run_command(const std::vector<std::string>& argv, int timeout_ms) {
    // No Catch assertions in here: it also runs after the test run (stopping guests).
    CommandResult r;
    int out_pipe[2], err_pipe[2];
    if (::pipe2(out_pipe, O_CLOEXEC) != 0) return r;
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) return r;
    std::vector<char*> args;
    std::vector<std::string> store = argv;
    for (auto& s : store)
        args.push_back(s.data());
    args.push_back(nullptr);
    pid_t pid = ::fork();
    if (pid < 0) return r;
    if (pid == 0) {
        ::dup2(out_pipe[1], 1);
        ::dup2(err_pipe[1], 2);
        ::setpgid(0, 0);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    ::close(out_pipe[1]);
    ::close(err_pipe[1]);
    auto deadline = Deadline::after_ms(timeout_ms);
    pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int open_fds = 2;
    while (open_fds > 0) {
        int n = ::poll(fds, 2, deadline.poll_timeout_ms());
        if (n == 0) {
            ::kill(-pid, SIGKILL);
            break;
        }
        if (n < 0 && errno == EINTR) continue;
        for (auto& p : fds) {
            if (p.fd < 0 || !(p.revents & (POLLIN | POLLHUP))) continue;
            char buf[8192];
            ssize_t k = ::read(p.fd, buf, sizeof buf);
            if (k <= 0) {
                ::close(p.fd);
                p.fd = -1;
                --open_fds;
                continue;
            }
            (p.fd == fds[0].fd ? r.out : r.err).append(buf, static_cast<size_t>(k));
        }
    }
    for (auto& p : fds) {
        if (p.fd >= 0) ::close(p.fd);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

TestGuest TestGuest::start(const GuestConfig& config) {
    require_guest_prerequisites();
    TestGuest g;
    g.config_ = config;
    g.run_dir_ = make_temp_dir("cloudvmi-test-" + config.name);
    g.state_dir_ = g.run_dir_ + "/state";
    g.boot();
    g.start_watchdog();
    return g;
}

void TestGuest::restart() {
    stop();
    boot();
}

void TestGuest::boot() {
    std::vector<std::string> cmd = {source_dir() + "/tests/guest/launch-guest.sh",
                                    "start",
                                    "--name",
                                    config_.name,
                                    "--dir",
                                    run_dir_,
                                    "--smp",
                                    std::to_string(config_.smp),
                                    "--image",
                                    config_.image};
    if (config_.image == "busybox") {
        // the debian image boots its own kernel
        for (const std::string& arg :
             {std::string("--flavour"), config_.flavour, std::string("--release"), config_.release})
            cmd.push_back(arg);
    } else if (!config_.release.empty() && config_.release != "bookworm") {
        // the debian image of another release (launch-guest.sh: bookworm or trixie)
        cmd.push_back("--release");
        cmd.push_back(config_.release);
    }
    if (!config_.append.empty()) {
        cmd.push_back("--append");
        cmd.push_back(config_.append);
    }
    if (!config_.hostname.empty()) {
        cmd.push_back("--hostname");
        cmd.push_back(config_.hostname);
    }
    if (config_.allow_reboot) cmd.push_back("--allow-reboot");
    auto r = run_command(cmd, 300000);
    // A guest kernel that oopses while booting under TCG is the emulator's flake, not a
    // finding: Debian unstable's kernel on 2 vCPUs did, before anything of ours ran (in
    // tick_nohz; then twice in a row at an int3 of its own code patching, 7.2.13). Up to
    // two more boots, each said loudly.
    for (int retry = 0; retry < kBootRetries && r.status != 0 &&
                        r.err.find("QEMU exited before the guest was ready") != std::string::npos;
         ++retry) {
        WARN("guest " << config_.describe() << " died while booting; booting it again:\n" << r.err);
        r = run_command(cmd, 300000);
    }
    INFO("launch-guest.sh start (" + config_.describe() + ") failed:\n" + r.out + r.err);
    REQUIRE(r.status == 0);
    for (auto line : split(r.out, '\n')) {
        auto eq = line.find('=');
        if (eq == std::string_view::npos) continue;
        std::string key(line.substr(0, eq));
        std::string value(line.substr(eq + 1));
        if (key == "GDB") gdb_ = value;
        if (key == "SERIAL") serial_ = value;
        if (key == "PID") qemu_pid_ = static_cast<int>(parse_u64(value).value_or(0));
        if (key == "QGA") qga_ = value;
        if (key == "QMP") qmp_ = value;
        if (key == "VMI_QMP") vmi_qmp_ = value;
        if (key == "SSH_PORT") ssh_port_ = value;
        if (key == "SSH_KEY") ssh_key_ = value;
        if (key == "KERNEL_VERSION") kernel_version_ = value;
        if (key == "ACCEL") accel_ = value;
        if (key == "CPU") cpu_model_ = value;
    }
    REQUIRE_FALSE(gdb_.empty());
    REQUIRE_FALSE(serial_.empty());
    REQUIRE_FALSE(vmi_qmp_.empty());
    REQUIRE_FALSE(kernel_version_.empty());
    running_ = true;
}

TestGuest::TestGuest(TestGuest&& o) noexcept
    : config_(std::move(o.config_)),
      run_dir_(std::move(o.run_dir_)),
      state_dir_(std::move(o.state_dir_)),
      gdb_(std::move(o.gdb_)),
      qmp_(std::move(o.qmp_)),
      vmi_qmp_(std::move(o.vmi_qmp_)),
      serial_(std::move(o.serial_)),
      qga_(std::move(o.qga_)),
      ssh_port_(std::move(o.ssh_port_)),
      ssh_key_(std::move(o.ssh_key_)),
      kernel_version_(std::move(o.kernel_version_)),
      accel_(std::move(o.accel_)),
      cpu_model_(std::move(o.cpu_model_)),
      qemu_pid_(o.qemu_pid_),
      running_(o.running_) {
    o.running_ = false;
}

TestGuest::~TestGuest() {
    stop();
}

void TestGuest::stop() {
    if (!running_) return;
    running_ = false;
    std::vector<std::string> cmd = {source_dir() + "/tests/guest/launch-guest.sh",
                                    "stop",
                                    "--name",
                                    config_.name,
                                    "--dir",
                                    run_dir_};
    auto r = run_command(cmd, 60000);
    if (r.status != 0 && qemu_pid_ > 0) ::kill(qemu_pid_, SIGKILL);
}

namespace {
std::unique_ptr<TestGuest>& shared_guest() {
    static std::unique_ptr<TestGuest> guest;
    return guest;
}

// Stops the shared guest when the test run ends (not from a static destructor, when
// Catch is already gone).
struct SharedGuestStopper : Catch::TestEventListenerBase {
    using TestEventListenerBase::TestEventListenerBase;
    void testRunEnded(const Catch::TestRunStats&) override { shared_guest().reset(); }
};
}  // namespace
CATCH_REGISTER_LISTENER(SharedGuestStopper)

TestGuest& TestGuest::shared() {
    auto& guest = shared_guest();
    if (!guest) {
        GuestConfig c = GuestConfig::from_environment();
        guest = std::make_unique<TestGuest>(start(c));
    }
    return *guest;
}

std::string TestGuest::serial_log() const {
    return read_whole_file(serial_);
}

long TestGuest::last_heartbeat() const {
    std::string log = serial_log();
    long best = -1;
    size_t pos = 0;
    const std::string key = "cloudvmi-heartbeat ";
    while ((pos = log.find(key, pos)) != std::string::npos) {
        pos += key.size();
        size_t end = pos;
        while (end < log.size() && std::isdigit(static_cast<unsigned char>(log[end])))
            ++end;
        if (auto v = parse_u64(log.substr(pos, end - pos)))
            best = std::max(best, static_cast<long>(*v));
    }
    return best;
}

bool TestGuest::wait_heartbeat_beyond(long beyond, int timeout_ms) const {
    auto deadline = Deadline::after_ms(timeout_ms);
    while (!deadline.expired()) {
        if (last_heartbeat() > beyond) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return last_heartbeat() > beyond;
}

void TestGuest::start_watchdog() {
    // Stops the guest if this test process dies without doing it (killed, crashed), so
    // that no QEMU outlives its test.
    std::string script = strformat(
        "while kill -0 %d 2>/dev/null; do sleep 1; done; '%s/tests/guest/launch-guest.sh' stop "
        "--name '%s' --dir '%s' >/dev/null 2>&1",
        static_cast<int>(::getpid()), source_dir().c_str(), config_.name.c_str(), run_dir_.c_str());
    pid_t pid = ::fork();
    if (pid == 0) {
        ::setsid();
        int devnull = ::open("/dev/null", O_RDWR);
        ::dup2(devnull, 0);
        ::dup2(devnull, 1);
        ::dup2(devnull, 2);
        // Not a child of ours for long: the intermediate exits, init adopts the watchdog.
        if (::fork() != 0) ::_exit(0);
        ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    if (pid > 0) ::waitpid(pid, nullptr, 0);
}

CommandResult TestGuest::ssh(const std::string& command, int timeout_ms) const {
    REQUIRE_FALSE(ssh_port_.empty());
    return run_command({"ssh", "-i", ssh_key_, "-p", ssh_port_, "-o", "StrictHostKeyChecking=no",
                        "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o",
                        "ConnectTimeout=20", "-o", "LogLevel=ERROR", "root@127.0.0.1", command},
                       timeout_ms);
}

std::string TestGuest::qmp(const std::string& command) const {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", qmp_.c_str());
    if (!fd.valid() || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        return "";
    }
    timeval tv{5, 0};
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    std::string buffer;
    // One JSON object per line; events ("event": ...) are skipped.
    auto next_reply = [&]() -> std::string {
        while (true) {
            auto nl = buffer.find('\n');
            if (nl != std::string::npos) {
                std::string line = buffer.substr(0, nl);
                buffer.erase(0, nl + 1);
                if (line.find("\"event\"") == std::string::npos) return line;
                continue;
            }
            char chunk[4096];
            auto n = ::read(fd.get(), chunk, sizeof chunk);
            if (n <= 0) return "";
            buffer.append(chunk, static_cast<size_t>(n));
        }
    };
    auto send = [&](const std::string& name) {
        std::string msg = "{\"execute\": \"" + name + "\"}\n";
        return ::write(fd.get(), msg.data(), msg.size()) == static_cast<ssize_t>(msg.size());
    };
    if (next_reply().find("QMP") == std::string::npos) return "";  // the greeting
    if (!send("qmp_capabilities") || next_reply().find("return") == std::string::npos) return "";
    if (!send(command)) return "";
    return next_reply();
}

std::string TestGuest::run_state() const {
    std::string reply = qmp("query-status");
    auto at = reply.find("\"status\": \"");
    if (at == std::string::npos) return "";
    at += 11;
    return reply.substr(at, reply.find('"', at) - at);
}

bool TestGuest::await_run_state(const std::string& state, int timeout_ms) const {
    return poll_until([&] { return run_state() == state; }, timeout_ms);
}

SessionOptions TestGuest::session_options() const {
    SessionOptions o;
    o.engine = env_or("CLOUDVMI_TEST_ENGINE", "mailbox") == "trap" ? EngineKind::kTrap
                                                                   : EngineKind::kMailbox;
    o.gdb_endpoint = gdb_;
    o.qmp = vmi_qmp_;
    o.state_dir = state_dir_;
    o.guardian_program = cloudvmi_binary();
    return o;
}

pid_t spawn_process(const std::vector<std::string>& argv, const std::string& log, bool own_group) {
    // Prepared before fork: the child may only make async-signal-safe calls.
    std::vector<std::string> store = argv;
    std::vector<char*> args;
    for (auto& a : store)
        args.push_back(a.data());
    args.push_back(nullptr);
    pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (own_group) ::setpgid(0, 0);
        int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            ::dup2(fd, 1);
            ::dup2(fd, 2);
        }
        ::execv(args[0], args.data());
        ::_exit(127);
    }
    return pid;
}

bool recovery_log_dirty(const std::string& state_dir) {
    DIR* d = ::opendir(state_dir.c_str());
    if (d == nullptr) return false;
    bool dirty = false;
    while (dirent* e = ::readdir(d)) {
        std::string name = e->d_name;
        if (name.size() < 4 || name.substr(name.size() - 4) != ".log") continue;
        // Other logs (the guardians' report) do not parse as a recovery record.
        auto record = RecoveryLog::read_file(state_dir + "/" + name);
        if (record && !record->clean) dirty = true;
    }
    ::closedir(d);
    return dirty;
}

KillOutcome kill_mid_session_then_attach(const TestGuest& guest, const KillRound& round,
                                         std::mt19937& rng) {
    std::string engine = env_or("CLOUDVMI_TEST_ENGINE", "mailbox");
    std::vector<std::string> argv = {cloudvmi_binary(), "guest", "--gdb",       guest.gdb(),
                                     "--engine",        engine,  "--state-dir", guest.state_dir()};
    if (round.long_job) {
        // Several seconds of batches on either engine (the mailbox one reads a few MiB a
        // second, the trap one far less).
        argv.push_back("cat");
        for (int i = 0; i < (engine == "trap" ? 1 : 8); ++i)
            argv.push_back("/proc/kallsyms");
    } else {
        argv.push_back("info");
    }
    KillOutcome outcome;
    pid_t pid = spawn_process(argv, "/dev/null", true);
    if (round.after_guest_modified) {
        auto deadline = Deadline::after_ms(round.attach_timeout_ms);
        while (!recovery_log_dirty(guest.state_dir()) && !deadline.expired() &&
               ::waitpid(pid, nullptr, WNOHANG) == 0)
            std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::uniform_int_distribution<int> delay_ms(0, round.max_delay_ms);
    outcome.killed_after_ms = delay_ms(rng);
    std::this_thread::sleep_for(std::chrono::milliseconds(outcome.killed_after_ms));
    ::kill(-pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    outcome.left_guest_modified = recovery_log_dirty(guest.state_dir());
    // The next session must get the VM, whatever state the dead one left it in.
    outcome.next_attach =
        run_command({cloudvmi_binary(), "guest", "--gdb", guest.gdb(), "--engine", engine,
                     "--state-dir", guest.state_dir(), "cat", "/proc/uptime"},
                    round.attach_timeout_ms);
    return outcome;
}

std::string trimmed(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' '))
        s.pop_back();
    return s;
}

std::unique_ptr<GdbstubAccess> attach_stub(const TestGuest& guest) {
    auto endpoint = gdb::Endpoint::parse(guest.gdb());
    REQUIRE(endpoint);
    auto access = GdbstubAccess::attach(*endpoint);
    INFO((access ? "" : access.error().describe()));
    REQUIRE(access);
    return std::move(*access);
}

std::string read_whole_file(const std::string& path) {
    std::ifstream f(path);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

std::vector<pid_t> processes_with(const std::string& needle) {
    std::vector<pid_t> found;
    DIR* d = ::opendir("/proc");
    if (d == nullptr) return found;
    while (dirent* e = ::readdir(d)) {
        auto pid = parse_u64(e->d_name);
        if (!pid || static_cast<pid_t>(*pid) == ::getpid()) continue;
        std::string cmdline = read_whole_file(std::string("/proc/") + e->d_name + "/cmdline");
        std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
        if (cmdline.find(needle) != std::string::npos) found.push_back(static_cast<pid_t>(*pid));
    }
    ::closedir(d);
    return found;
}

std::vector<pid_t> guardians_of(const std::string& state_dir) {
    return processes_with(" guard --log " + state_dir + "/");
}

bool await_guardians_gone(const std::string& state_dir, int timeout_ms) {
    return poll_until([&] { return guardians_of(state_dir).empty(); }, timeout_ms);
}

std::string text(const std::vector<uint8_t>& bytes) {
    return std::string(bytes.begin(), bytes.end());
}

std::string read_text(GuestFileOps& ops, const std::string& path) {
    auto r = ops.read_file(path);
    INFO(path << ": " << (r ? "" : r.error().describe()));
    REQUIRE(r);
    return text(*r);
}

int64_t workload_pid(GuestFileOps& ops, const std::string& name) {
    std::string s = read_text(ops, "/run/workload/" + name + ".pid");
    auto v = parse_u64(std::string(split(s, '\n')[0]));
    INFO("workload pid file of " << name << ": '" << s << "'");
    REQUIRE(v.has_value());
    return static_cast<int64_t>(*v);
}

std::vector<int64_t> foreign_shadows(const TestGuest& guest, const std::string& state_dir) {
    SessionOptions o = guest.session_options();
    o.state_dir = state_dir;
    GuestSession checker(o);
    GuestFileOps ops(checker);
    auto attached = checker.attach();
    INFO("attaching to " << guest.gdb() << ": " << (attached ? "" : attached.error().describe()));
    REQUIRE(attached);
    std::vector<int64_t> others;
    for (int i = 0; i < 50; ++i) {
        others.clear();
        for (int64_t pid : processes_named(ops, "cloudvmi-shadow")) {
            if (pid != checker.status().shadow_pid) others.push_back(pid);
        }
        if (others.empty()) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return others;
}

bool unmount_and_reap(const std::string& mountpoint, pid_t daemon) {
    run_command({"fusermount3", "-u", mountpoint}, 30000);
    int status = 0;
    auto gone = Deadline::after_ms(60000);
    while (::waitpid(daemon, &status, WNOHANG) != daemon && !gone.expired())
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (gone.expired()) {
        ::kill(daemon, SIGKILL);
        ::waitpid(daemon, &status, 0);
    }
    return !gone.expired();
}

std::string field_value(const std::string& text, const std::string& key) {
    for (auto line : split(text, '\n')) {
        if (starts_with(line, key + ":")) {
            std::string v(line.substr(key.size() + 1));
            v.erase(0, v.find_first_not_of(" \t"));
            return v;
        }
    }
    return "";
}

std::vector<int64_t> numeric_entries(const std::vector<GuestDirEntry>& entries) {
    std::vector<int64_t> pids;
    for (const auto& e : entries) {
        if (auto v = parse_u64(e.name)) pids.push_back(static_cast<int64_t>(*v));
    }
    return pids;
}

std::vector<int64_t> processes_named(GuestFileOps& ops, const std::string& name) {
    auto entries = ops.list_dir("/proc");
    REQUIRE(entries);
    std::vector<int64_t> found;
    for (int64_t pid : numeric_entries(*entries)) {
        auto comm = ops.read_file("/proc/" + std::to_string(pid) + "/comm");
        if (comm && text(*comm) == name + "\n") found.push_back(pid);
    }
    return found;
}

}  // namespace cloudvmi::test
