// The redirector against a real guest: kernel discovery, the shadow, file operations,
// errno passthrough, workload integrity and the CLI. One guest per test process.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <csignal>
#include <set>
#include <thread>

#include "common/strings.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "redirector/x86/guest_abi.h"
#include "tests/integration/guest_fixture.h"

using namespace cloudvmi;
using namespace cloudvmi::test;
using B = SyscallBatch;

TEST_CASE("kernel entry points are found and syscalls run in the shadow", "[guest]") {
    auto& guest = TestGuest::shared();
    INFO("guest: " << guest.config().describe() << ", kernel " << guest.kernel_version());
    GuestSession session(guest.session_options());
    auto attached = session.attach();
    INFO((attached ? "" : attached.error().describe()));
    REQUIRE(attached);
    auto st = session.status();
    WARN("kernel " << guest.kernel_version() << " (" << guest.config().describe() << "): attach "
                   << st.bootstrap.total_ms << " ms (hijack " << st.bootstrap.hijack_ms << " ms), "
                   << st.bootstrap_cost.stops << " VM stops, "
                   << st.bootstrap_cost.breakpoint_changes << " breakpoint changes, borrowed "
                   << st.bootstrap.borrowed << "; " << st.kernel.describe());
    CHECK(st.state == SessionState::kAttached);
    CHECK(st.kernel.syscall_entry >= 0xffffffff80000000ULL);
    CHECK(st.kernel.sysret > st.kernel.syscall_entry);
    CHECK(st.kernel.sysret - st.kernel.syscall_entry < 0x600);
    // The slow return path and its iretq are informational (the injector uses neither);
    // every kernel of the kit has them where discovery looks.
    CHECK(st.kernel.slow_return != 0);
    CHECK(st.kernel.iret != 0);
    bool nopti = guest.config().append.find("nopti") != std::string::npos;
    // The kit boots an Intel-vendor CPU, on which Linux enables PTI unless told not to.
    CHECK(st.kernel.pti == !nopti);
    CHECK(st.shadow_pid > 1);
    CHECK(st.guardian_pid > 0);
    CHECK(st.bootstrap.total_ms > 0);

    SyscallBatch b;
    auto pid = b.add(x86abi::kGetpid, {});
    auto ppid = b.add(x86abi::kGetppid, {});
    auto uid = b.add(x86abi::kGetuid, {});
    auto uts = b.output(x86abi::kUtsnameSize);
    auto un = b.add(x86abi::kUname, {B::buf(uts)});
    b.filled_by(uts, un, B::Fill::kWhole);
    auto out = session.run(b);
    REQUIRE(out);
    CHECK(out->result(pid) == st.shadow_pid);
    CHECK(out->result(ppid) == 1);  // adopted by init: no zombie under the hijacked process
    CHECK(out->result(uid) == 0);
    auto u = parse_utsname(out->bytes(uts));
    CHECK(u.sysname == "Linux");
    CHECK(u.machine == "x86_64");
    CHECK(u.release == guest.kernel_version());
    CHECK(u.release.find(guest.config().flavour == "generic" ? "-amd64" : guest.config().flavour) !=
          std::string::npos);

    // References between ops and cancel-on-failure, executed by the guest-side interpreter.
    SyscallBatch c;
    auto missing = c.input_string("/does/not/exist");
    auto open_missing =
        c.add(x86abi::kOpenat, {B::imm_signed(x86abi::kAtFdcwd), B::buf(missing), B::imm(0)}, true);
    auto after = c.add(x86abi::kGetpid, {});
    auto outc = session.run(c);
    REQUIRE(outc);
    CHECK(outc->error_of(open_missing) == ENOENT);
    CHECK(outc->error_of(after) == ECANCELED);
    REQUIRE(session.detach());
}

TEST_CASE("guest files are read through the shadow", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    auto meminfo = read_text(ops, "/proc/meminfo");
    CHECK(starts_with(meminfo, "MemTotal:"));
    CHECK(meminfo.find("MemFree:") != std::string::npos);
    auto status = read_text(ops, "/proc/1/status");
    CHECK(field_value(status, "Pid") == "1");
    CHECK_FALSE(field_value(status, "Name").empty());
    CHECK(read_text(ops, "/etc/cloudvmi-known") == "cloudvmi known file\n");
    CHECK(read_text(ops, "/etc/cloudvmi-secret") == "secret\n");
    // The shadow reads its own name: what `ps` in the guest shows.
    CHECK(read_text(ops, "/proc/self/comm") == "cloudvmi-shadow\n");
    auto cmdline = ops.read_file("/proc/self/cmdline");
    REQUIRE(cmdline);
    CHECK(text(*cmdline) == std::string("cloudvmi-shadow\0", 16));
    // A file larger than one batch's buffers (kallsyms is several MiB).
    auto big = ops.read_head("/proc/kallsyms", 600 * 1024);
    REQUIRE(big);
    CHECK(big->size() == 600 * 1024);
    auto st = ops.stat("/etc/cloudvmi-secret");
    REQUIRE(st);
    CHECK((st->mode & 0777) == 0600);
    CHECK(st->size == 7);
    auto link = ops.readlink("/proc/self/exe");
    REQUIRE(link);
    CHECK(link->find("busybox") != std::string::npos);
    auto u = ops.uname();
    REQUIRE(u);
    CHECK(u->nodename == "cloudvmi-guest");
}

TEST_CASE("listing /proc shows every process", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    auto entries = ops.list_dir("/proc");
    REQUIRE(entries);
    auto pids = numeric_entries(*entries);
    std::set<int64_t> set(pids.begin(), pids.end());
    CHECK(set.count(1));
    CHECK(set.count(session.status().shadow_pid));
    for (const char* w : {"heartbeat", "user", "blocked", "container"}) {
        INFO("workload " << w);
        CHECK(set.count(workload_pid(ops, w)));
    }
    // /proc/loadavg's fourth field counts every task; all are single-threaded here, so it
    // must match the number of pid directories (give or take the heartbeat's `sleep`).
    auto loadavg = read_text(ops, "/proc/loadavg");
    auto fields = split(loadavg, ' ');
    REQUIRE(fields.size() >= 4);
    auto slash = fields[3].find('/');
    auto total = parse_u64(fields[3].substr(slash + 1));
    REQUIRE(total);
    INFO("loadavg: " << loadavg << " pid dirs: " << pids.size());
    CHECK(std::abs(static_cast<long>(*total) - static_cast<long>(pids.size())) <= 3);
    // ls -l: every entry got its attributes in batched newfstatat calls.
    auto detailed = ops.list_dir_with_stats("/proc");
    REQUIRE(detailed);
    int with_stat = 0;
    for (const auto& e : *detailed)
        with_stat += e.stat.has_value();
    CHECK(with_stat >= static_cast<int>(detailed->size()) - 3);
}

TEST_CASE("writing a sysctl changes the guest", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    std::string before = read_text(ops, "/proc/sys/kernel/hostname");
    std::string value = "renamed-by-cloudvmi\n";
    auto n = ops.write_file("/proc/sys/kernel/hostname", {value.begin(), value.end()});
    REQUIRE(n);
    CHECK(*n == value.size());
    CHECK(read_text(ops, "/proc/sys/kernel/hostname") == value);
    auto u = ops.uname();
    REQUIRE(u);
    CHECK(u->nodename == "renamed-by-cloudvmi");
    REQUIRE(ops.write_file("/proc/sys/kernel/hostname", {before.begin(), before.end()}));
    CHECK(read_text(ops, "/proc/sys/kernel/hostname") == before);
}

TEST_CASE("the guest's errno reaches the caller unchanged", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    auto missing = ops.read_file("/no/such/file");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code() == ENOENT);
    CHECK(missing.error().from_guest());
    // A read-only sysctl refuses writes even to root.
    auto ro = ops.write_file("/proc/sys/kernel/version", {'x', '\n'});
    REQUIRE_FALSE(ro);
    CHECK(ro.error().code() == EACCES);
    CHECK(ro.error().from_guest());
    auto notdir = ops.list_dir("/etc/cloudvmi-known");
    REQUIRE_FALSE(notdir);
    CHECK(notdir.error().code() == ENOTDIR);
    auto isdir = ops.read_file("/etc");
    REQUIRE_FALSE(isdir);
    CHECK(isdir.error().code() == EISDIR);
    auto nolink = ops.readlink("/etc/cloudvmi-known");
    REQUIRE_FALSE(nolink);
    CHECK(nolink.error().code() == EINVAL);
    auto nokill = ops.kill(999999, 0);
    REQUIRE_FALSE(nokill);
    CHECK(nokill.error().code() == ESRCH);
}

TEST_CASE("the guest workload is intact", "[guest]") {
    auto& guest = TestGuest::shared();
    long beat = guest.last_heartbeat();
    REQUIRE(beat >= 0);
    {
        GuestSession session(guest.session_options());
        GuestFileOps ops(session);
        auto user =
            read_text(ops, "/proc/" + std::to_string(workload_pid(ops, "user")) + "/status");
        CHECK(starts_with(field_value(user, "Uid"), "1000"));
        auto blocked_pid = std::to_string(workload_pid(ops, "blocked"));
        auto blocked = read_text(ops, "/proc/" + blocked_pid + "/status");
        CHECK(starts_with(field_value(blocked, "State"), "S"));
        // Still inside its read() of a pipe nobody writes: syscall 0 in /proc/PID/syscall.
        auto syscall = read_text(ops, "/proc/" + blocked_pid + "/syscall");
        CHECK(starts_with(syscall, "0 "));
        // Where it sleeps: pipe_read (anon_pipe_read since 6.15); x86-64 kernels before 5.16
        // built with the ORC unwinder (Debian 11's 5.10) always report "0".
        auto wchan = read_text(ops, "/proc/" + blocked_pid + "/wchan");
        INFO("wchan of the blocked reader: " << wchan);
        CHECK((wchan.ends_with("pipe_read") || wchan == "0"));
        auto container = std::to_string(workload_pid(ops, "container"));
        auto own_ns = ops.readlink("/proc/self/ns/mnt");
        auto init_ns = ops.readlink("/proc/1/ns/mnt");
        auto container_ns = ops.readlink("/proc/" + container + "/ns/mnt");
        REQUIRE(own_ns);
        REQUIRE(init_ns);
        REQUIRE(container_ns);
        // The shadow lives in init's mount namespace, never in the container's.
        CHECK(*own_ns == *init_ns);
        CHECK(*container_ns != *init_ns);
        // No zombie anywhere (S1 exited and was reaped; nothing left behind).
        auto entries = ops.list_dir("/proc");
        REQUIRE(entries);
        for (int64_t pid : numeric_entries(*entries)) {
            auto st = ops.read_file("/proc/" + std::to_string(pid) + "/status");
            if (!st) continue;  // exited meanwhile
            INFO("pid " << pid << ": " << text(*st).substr(0, 80));
            CHECK_FALSE(starts_with(field_value(text(*st), "State"), "Z"));
        }
    }
    // The guest keeps running between requests and after detach.
    CHECK(guest.wait_heartbeat_beyond(beat + 2, 15000));
}

TEST_CASE("no shadow remains after detach", "[guest]") {
    auto& guest = TestGuest::shared();
    int64_t first_shadow = 0;
    {
        GuestSession session(guest.session_options());
        REQUIRE(session.attach());
        first_shadow = session.status().shadow_pid;
        REQUIRE(session.detach());
    }
    GuestSession checker(guest.session_options());
    GuestFileOps ops(checker);
    REQUIRE(checker.attach());
    int64_t own = checker.status().shadow_pid;
    CHECK(own != first_shadow);
    // Give init a moment to reap the exited shadow.
    std::vector<int64_t> shadows;
    for (int i = 0; i < 20; ++i) {
        shadows = processes_named(ops, "cloudvmi-shadow");
        if (shadows.size() == 1) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(shadows == std::vector<int64_t>{own});
}

TEST_CASE("guest fds are not leaked by open/close cycles", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    auto fd_dir = "/proc/" + std::to_string(session.status().shadow_pid) + "/fd";
    auto base = ops.list_dir(fd_dir);
    REQUIRE(base);
    for (int i = 0; i < 300; ++i) {
        auto fd = ops.open("/proc/uptime", x86abi::kORdonly);
        REQUIRE(fd);
        auto data = ops.read(*fd, 256);
        REQUIRE(data);
        REQUIRE(ops.close(*fd));
    }
    auto after = ops.list_dir(fd_dir);
    REQUIRE(after);
    CHECK(after->size() == base->size());
}

TEST_CASE("an fd of a shadow that was replaced never reaches its successor", "[guest]") {
    auto& guest = TestGuest::shared();
    GuestSession session(guest.session_options());
    GuestFileOps ops(session);
    REQUIRE(session.attach());
    auto old_fd = ops.open("/proc/uptime", GuestFileOps::kOpenForReading);
    REQUIRE(old_fd);
    int64_t old_pid = session.status().shadow_pid;
    (void)ops.kill(old_pid, SIGKILL);  // the shadow ends itself; how that batch ends is moot
    // The next request gets a new shadow; its first fd likely has the old one's number.
    auto new_fd = ops.open("/proc/version", GuestFileOps::kOpenForReading);
    REQUIRE(new_fd);
    CHECK(session.status().shadow_pid != old_pid);
    CHECK(new_fd->shadow != old_fd->shadow);
    INFO("old fd " << old_fd->fd << ", new fd " << new_fd->fd);
    auto stale = ops.read(*old_fd, 64);
    REQUIRE_FALSE(stale);
    CHECK(stale.error().code() == EBADF);
    CHECK_FALSE(stale.error().from_guest());
    // Dropped: had it been queued, it would close the new shadow's fd before this read.
    ops.close_soon(*old_fd);
    auto data = ops.read(*new_fd, 256);
    REQUIRE(data);
    CHECK(text(*data).find("Linux version") == 0);
    REQUIRE(ops.close(*new_fd));
}

TEST_CASE("cloudvmi guest command line", "[guest]") {
    auto& guest = TestGuest::shared();
    auto cli = [&](std::vector<std::string> args) {
        std::vector<std::string> argv = {cloudvmi_binary(), "guest",       "--gdb",
                                         guest.gdb(),       "--state-dir", guest.state_dir()};
        argv.insert(argv.end(), args.begin(), args.end());
        return run_command(argv);
    };
    auto meminfo = cli({"cat", "/proc/meminfo"});
    INFO(meminfo.err);
    CHECK(meminfo.status == 0);
    CHECK(starts_with(meminfo.out, "MemTotal:"));
    auto info = cli({"info"});
    CHECK(info.status == 0);
    CHECK(info.out.find("Linux cloudvmi-guest " + guest.kernel_version()) != std::string::npos);
    CHECK(info.out.find("syscall entry: 0xffffffff") != std::string::npos);
    CHECK(info.out.find("shadow pid:") != std::string::npos);
    auto missing = cli({"cat", "/nonexistent"});
    CHECK(missing.status == 1);
    CHECK(missing.err == "cloudvmi: /nonexistent: No such file or directory\n");
    auto ls = cli({"ls", "/etc"});
    CHECK(ls.status == 0);
    CHECK(ls.out.find("cloudvmi-known\n") != std::string::npos);
    auto write = cli({"write", "/proc/sys/kernel/domainname", "cloudvmi-test"});
    CHECK(write.status == 0);
    auto back = cli({"cat", "/proc/sys/kernel/domainname"});
    CHECK(back.out == "cloudvmi-test\n");
    auto usage = cli({"frobnicate"});
    CHECK(usage.status == 2);
    auto help = run_command({cloudvmi_binary(), "guest", "--help"});
    CHECK(help.status == 0);
    CHECK(help.out.find("Usage: cloudvmi guest") != std::string::npos);
}
