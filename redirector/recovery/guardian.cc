#include "redirector/recovery/guardian.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "common/deadline.h"
#include "common/log.h"
#include "common/paths.h"
#include "common/strings.h"
#include "redirector/guest/gdbstub_access.h"
#include "redirector/guest/qmp_monitor.h"
#include "redirector/journal/recovery_log.h"
#include "redirector/recovery/recovery.h"

namespace cloudvmi {

namespace {

constexpr int kGuardianFd = 3;
constexpr Millis kReadyTimeout{5000};
constexpr Millis kReconnectTimeout{15000};
constexpr Millis kQmpTimeout{3000};

}  // namespace

ErrorOr<GuardianHandle> spawn_guardian(const std::string& program, const GuardianArgs& args) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        return errno_error("socketpair for the guardian");
    }
    UniqueFd ours(sv[0]);
    UniqueFd theirs(sv[1]);

    // Everything the child needs is prepared before fork: after fork in a threaded
    // process only async-signal-safe calls are allowed.
    std::vector<std::string> argv_store = {
        program,     "guard",
        "--log",     args.log_path,
        "--lock",    args.lock_path,
        "--session", strformat("%llx", static_cast<unsigned long long>(args.session_id)),
        "--fd",      std::to_string(kGuardianFd),
        "--report",  args.report_path,
        "--qmp",     args.qmp};
    std::vector<char*> argv;
    for (auto& s : argv_store)
        argv.push_back(s.data());
    argv.push_back(nullptr);

    pid_t child = ::fork();
    if (child < 0) return errno_error("fork for the guardian");
    if (child == 0) {
        // Intermediate child: new session, fork the guardian, exit so init adopts it.
        ::setsid();
        pid_t g = ::fork();
        if (g != 0) ::_exit(g < 0 ? 1 : 0);
        if (::dup2(theirs.get(), kGuardianFd) < 0) ::_exit(127);
        ::syscall(SYS_close_range, kGuardianFd + 1, ~0U, 0);
        int devnull = ::open("/dev/null", O_RDWR);
        if (devnull >= 0) {
            ::dup2(devnull, 0);
            ::dup2(devnull, 1);
            ::dup2(devnull, 2);
            if (devnull > 2 && devnull != kGuardianFd) ::close(devnull);
        }
        ::execv(program.c_str(), argv.data());
        ::_exit(127);
    }
    theirs.reset();
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        return make_error(ECHILD, "could not start the guardian process");
    }
    // The guardian announces itself; until then the guest is not touched.
    std::string line;
    auto deadline = Deadline::after(kReadyTimeout);
    while (line.find('\n') == std::string::npos) {
        pollfd p{ours.get(), POLLIN, 0};
        int r = ::poll(&p, 1, deadline.poll_timeout_ms());
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return make_error(ETIMEDOUT, "the guardian process did not report ready");
        char buf[64];
        ssize_t n = ::read(ours.get(), buf, sizeof buf);
        if (n <= 0) {
            return make_error(ECHILD, "the guardian process exited at once (is " + program +
                                          " a cloudvmi binary?)");
        }
        line.append(buf, static_cast<size_t>(n));
    }
    GuardianHandle h;
    if (starts_with(line, "ready ")) {
        h.pid = static_cast<pid_t>(parse_u64(line.substr(6, line.find('\n') - 6)).value_or(0));
    }
    if (h.pid <= 0) return make_error(EPROTO, "unexpected guardian greeting: " + printable(line));
    h.link = std::move(ours);
    return h;
}

ErrorOr<GuardianArgs> parse_guardian_args(int argc, char** argv) {
    GuardianArgs a;
    for (int i = 0; i + 1 < argc; i += 2) {
        std::string k = argv[i];
        std::string v = argv[i + 1];
        if (k == "--log") {
            a.log_path = v;
        } else if (k == "--lock") {
            a.lock_path = v;
        } else if (k == "--session") {
            a.session_id = parse_hex_u64(v).value_or(0);
        } else if (k == "--fd") {
            a.parent_fd = static_cast<int>(parse_u64(v).value_or(0));
        } else if (k == "--report") {
            a.report_path = v;
        } else if (k == "--qmp") {
            a.qmp = v;
        } else {
            return make_error(EINVAL, "guard: unknown option " + k);
        }
    }
    if (argc % 2 != 0) return make_error(EINVAL, "guard: option without a value");
    if (a.log_path.empty() || a.lock_path.empty() || a.session_id == 0 || a.parent_fd < 0) {
        return make_error(EINVAL, "guard: --log, --lock, --session and --fd are required");
    }
    return a;
}

namespace {

// The guardian writes what it did next to the log, since its stderr goes nowhere.
void report(const GuardianArgs& args, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void report(const GuardianArgs& args, const char* fmt, ...) {
    if (args.report_path.empty()) return;
    auto fd = open_private_file(args.report_path, O_WRONLY | O_APPEND | O_CREAT);
    if (!fd) return;
    FILE* f = ::fdopen(fd->get(), "a");
    if (f == nullptr) return;
    (void)fd->release();
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    time_t now = time(nullptr);
    char when[32];
    std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", std::localtime(&now));
    std::fprintf(f, "%s guardian[%d] session %llx: %s\n", when, static_cast<int>(getpid()),
                 static_cast<unsigned long long>(args.session_id), msg);
    std::fclose(f);
}

}  // namespace

// Opening without keeping the old record writes a clean one.
static void mark_clean(const std::string& log_path) {
    (void)RecoveryLog::open_file(log_path, false);
}

namespace {

// QEMU's run state as the dead session left it, or "" if it was ours to resume: "running",
// "debug" (a breakpoint or an interrupt of ours) and "prelaunch" (a reset while stopped:
// we only attach to a running VM) are, and "paused" while the record says our stub
// connection paused it; anything else (paused, io-error, ...) was someone else's stop.
// "" as well when QMP does not answer: then the VM is resumed as before.
std::string stopped_by_others(const GuardianArgs& args, const RecoveryRecord& rec) {
    if (args.qmp.empty()) return "";
    auto monitor = QmpMonitor::connect(args.qmp, Deadline::after(kQmpTimeout));
    auto state = monitor ? (*monitor)->current(Deadline::after(kQmpTimeout))
                         : ErrorOr<VmRunState>(std::unexpected(monitor.error()));
    if (!state) {
        report(args, "cannot ask %s whether someone else stopped the VM: %s", args.qmp.c_str(),
               state.error().describe().c_str());
        return "";
    }
    if (state->running || state->status == "debug" || state->status == "prelaunch") return "";
    if (state->status == "paused" && rec.connect_pause) return "";
    return state->status;
}

}  // namespace

int run_guardian(const GuardianArgs& args) {
    ::signal(SIGPIPE, SIG_IGN);
    ::signal(SIGHUP, SIG_IGN);
    ::signal(SIGINT, SIG_IGN);
    std::string hello = strformat("ready %d\n", static_cast<int>(getpid()));
    if (::write(args.parent_fd, hello.data(), hello.size()) < 0) return 1;

    // Sleep until the parent closes its end or dies.
    char buf[64];
    while (true) {
        ssize_t n = ::read(args.parent_fd, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0 && errno != EINTR) break;
    }
    ::close(args.parent_fd);

    // The parent held the session lock; once it is ours nobody else touches the VM.
    auto opened = open_private_file(args.lock_path, O_RDWR | O_CREAT);
    if (!opened) {
        report(args, "cannot open lock %s: %s", args.lock_path.c_str(),
               opened.error().describe().c_str());
        return 1;
    }
    UniqueFd lock = std::move(*opened);
    while (::flock(lock.get(), LOCK_EX | LOCK_NB) < 0) {
        auto rec = RecoveryLog::read_file(args.log_path);
        if (!rec || rec->session_id != args.session_id) return 0;  // someone took over
        std::this_thread::sleep_for(Millis(50));
    }
    auto rec = RecoveryLog::read_file(args.log_path);
    if (!rec) {
        report(args, "cannot read %s: %s", args.log_path.c_str(), rec.error().describe().c_str());
        return 1;
    }
    if (rec->session_id != args.session_id || rec->clean) return 0;

    report(args, "session ended uncleanly (owner pid %d); restoring the guest at %s",
           rec->owner_pid, rec->endpoint);
    // Our stderr goes nowhere: the details of the recovery go next to the report.
    if (!args.report_path.empty()) {
        log::set_output_file(args.report_path);
        if (!log::enabled(log::Level::kInfo)) log::set_level(log::Level::kInfo);
    }
    LOG_INFO(
        "record: thread phase %u (vcpu %d, cr3 %s, landing %s), shadow phase %u (pid %lld), "
        "%u breakpoints, parent region %s",
        static_cast<unsigned>(rec->thread_phase), rec->thread_vcpu,
        hex_u64(rec->thread_cr3).c_str(), hex_u64(rec->landing).c_str(),
        static_cast<unsigned>(rec->shadow_phase), static_cast<long long>(rec->shadow_pid),
        rec->breakpoint_count, hex_u64(rec->parent_region).c_str());
    auto endpoint = gdb::Endpoint::parse(rec->endpoint);
    if (!endpoint) {
        report(args, "bad endpoint in log: %s", endpoint.error().describe().c_str());
        return 1;
    }
    auto start = Clock::now();
    auto deadline = Deadline::after(kReconnectTimeout);
    // Asked before our own stub connection pauses the VM.
    std::string stopped_by = stopped_by_others(args, *rec);
    std::unique_ptr<GdbstubAccess> guest;
    if (rec->about_earlier_vm_run(endpoint->identity())) {
        report(args, "the VM is gone or was restarted: nothing to restore");
        mark_clean(args.log_path);
        return 0;
    }
    while (true) {
        auto g = GdbstubAccess::attach(*endpoint);
        if (g) {
            guest = std::move(*g);
            break;
        }
        int code = g.error().code();
        if (code == ENOENT || code == ECONNREFUSED) {
            // No stub listens any more: the QEMU whose guest we touched is gone with it.
            report(args, "the VM is gone (%s): nothing to restore", g.error().describe().c_str());
            mark_clean(args.log_path);
            return 0;
        }
        if (deadline.expired()) {
            report(args, "cannot reach the gdbstub: %s", g.error().describe().c_str());
            return 1;
        }
        std::this_thread::sleep_for(Millis(100));
    }
    auto log = RecoveryLog::open_file(args.log_path, true);
    if (!log) {
        report(args, "cannot reopen %s: %s", args.log_path.c_str(), log.error().describe().c_str());
        return 1;
    }
    auto result = recover_guest(*guest, *rec, **log, ShadowOptions{});
    if (!result) {
        // Detaching now could let a thread run on with our registers: leave the VM as it
        // is (its breakpoints still catch that thread) and the log dirty, so that the next
        // cloudvmi to attach finishes the job.
        report(args, "recovery failed, the log is kept for the next attach: %s",
               result.error().describe().c_str());
        return 1;
    }
    (*log)->edit().connect_pause = 0;  // resumed by the detach, or left to its owner
    if (!stopped_by.empty()) {
        // A detach would resume it: only close the connection.
        guest->abandon();
        (*log)->commit();
        report(args, "guest restored in %.0f ms (%s); the VM stays stopped (%s, not by cloudvmi)",
               elapsed_ms(start), result->describe().c_str(), stopped_by.c_str());
        return 0;
    }
    auto detached = guest->detach();
    if (!detached) {
        report(args, "detach failed: %s", detached.error().describe().c_str());
        return 1;
    }
    (*log)->commit();
    report(args, "guest restored in %.0f ms (%s%s)", elapsed_ms(start), result->describe().c_str(),
           rec->connect_pause ? ", the pause of its stub connection ended" : "");
    return 0;
}

}  // namespace cloudvmi
