// `cloudvmi guest`: one-shot operations on one guest, for scripts and for trying things out.
#include <getopt.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/log.h"
#include "common/strings.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi::cli {

namespace {

const char kGuestUsage[] =
    "Usage: cloudvmi guest --gdb ENDPOINT [OPTIONS] COMMAND [ARGS]\n"
    "\n"
    "Commands:\n"
    "  info                 guest uname, discovered kernel entry points, shadow process\n"
    "  cat FILE...          print guest files\n"
    "  ls [-l] DIR          list a guest directory (-l: with attributes)\n"
    "  stat FILE            attributes of a guest file (symlinks not followed)\n"
    "  readlink FILE        target of a guest symlink\n"
    "  write [-n] FILE VALUE  write VALUE and a newline (-n: no newline) to a guest file\n"
    "  kill PID [SIGNAL]    send a signal to a guest process (default 15)\n"
    "\n"
    "Options:\n"
    "  --gdb ENDPOINT       QEMU gdbstub: unix:PATH or tcp:HOST:PORT (required)\n"
    "  --qmp SOCKET         a QMP socket of the VM's QEMU for cloudvmi alone: a VM\n"
    "                       paused by anyone else is then never attached to or resumed\n"
    "  --timeout MS         bound for each gdbstub request and connect (default 3000)\n"
    "  --attach-timeout MS  bound for the whole attach: finding a thread, starting the\n"
    "                       shadow (default 20000)\n"
    "  --engine ENGINE      mailbox (default: batches through guest RAM, no VM stop;\n"
    "                       the trap engine if QEMU is not local) or trap (one VM stop\n"
    "                       per batch through the gdbstub)\n"
    "  --state-dir DIR      recovery logs and locks (default /run/cloudvmi as root)\n"
    "  --no-guardian        do not start the guardian process (unsafe if killed)\n"
    "  --log-level LEVEL    error, warn, info, debug or trace (default warn)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 success, 1 the guest refused the operation (its errno is printed),\n"
    "2 usage error, 3 the VM could not be reached, attached or recognised.\n";

int fail(const std::string& what, const Error& e) {
    if (e.from_guest()) {
        // As cat(1) would say it: the guest's errno, unchanged.
        std::fprintf(stderr, "cloudvmi: %s: %s\n", what.c_str(), std::strerror(e.code()));
        return kExitGuestError;
    }
    std::fprintf(stderr, "cloudvmi: %s: %s\n", what.c_str(), e.describe().c_str());
    return kExitUnreachable;
}

std::string mode_string(uint32_t mode) {
    char s[11] = "----------";
    switch (mode & S_IFMT) {
        case S_IFDIR:
            s[0] = 'd';
            break;
        case S_IFLNK:
            s[0] = 'l';
            break;
        case S_IFCHR:
            s[0] = 'c';
            break;
        case S_IFBLK:
            s[0] = 'b';
            break;
        case S_IFIFO:
            s[0] = 'p';
            break;
        case S_IFSOCK:
            s[0] = 's';
            break;
        default:
            break;
    }
    const char* rwx = "rwxrwxrwx";
    for (int i = 0; i < 9; ++i) {
        if (mode & (1u << (8 - i))) s[1 + i] = rwx[i];
    }
    return s;
}

void print_stat_line(const GuestStat& st, const std::string& name) {
    std::printf("%s %3llu %5u %5u %10lld %s\n", mode_string(st.mode).c_str(),
                static_cast<unsigned long long>(st.nlink), st.uid, st.gid,
                static_cast<long long>(st.size), name.c_str());
}

int cmd_info(GuestSession& session, GuestFileOps& ops) {
    auto u = ops.uname();
    if (!u) return fail("uname", u.error());
    auto st = session.status();
    std::printf("guest:         %s %s %s %s %s\n", u->sysname.c_str(), u->nodename.c_str(),
                u->release.c_str(), u->version.c_str(), u->machine.c_str());
    std::printf("syscall entry: %s\n", hex_u64(st.kernel.syscall_entry).c_str());
    std::printf("sysret:        %s\n", hex_u64(st.kernel.sysret).c_str());
    std::printf("slow return:   %s (iretq %s)\n", hex_u64(st.kernel.slow_return).c_str(),
                st.kernel.iret ? hex_u64(st.kernel.iret).c_str() : "not found");
    std::printf("pti:           %s\n", st.kernel.pti ? "on" : "off");
    std::printf("shadow pid:    %lld (region %s)\n", static_cast<long long>(st.shadow_pid),
                hex_u64(st.shadow_region).c_str());
    std::printf("guardian pid:  %d\n", static_cast<int>(st.guardian_pid));
    std::printf(
        "bootstrap:     hijack %.1f ms, shadow caught %.1f ms later, total %.1f ms "
        "(%d attempt%s)\n",
        st.bootstrap.hijack_ms, st.bootstrap.first_catch_ms, st.bootstrap.total_ms,
        st.bootstrap.attempts, st.bootstrap.attempts == 1 ? "" : "s");
    std::printf("borrowed:      %s\n", st.bootstrap.borrowed.c_str());
    const auto& inj = st.bootstrap.injector;
    std::printf("candidates:    %d seen, %d let go%s%s\n", inj.candidates_seen,
                inj.candidates_rejected, inj.rejected.empty() ? "" : ": ", inj.rejected.c_str());
    std::printf(
        "vm stops:      %llu during the bootstrap (%d at the kernel-wide trap, armed "
        "%.1f ms, rested %d times; %d of other threads), %llu breakpoint changes, stopped "
        "%.1f ms in all\n",
        static_cast<unsigned long long>(st.bootstrap_cost.stops), inj.kernel_trap_stops,
        inj.kernel_trap_armed_ms, inj.kernel_trap_rests, inj.foreign_stops,
        static_cast<unsigned long long>(st.bootstrap_cost.breakpoint_changes),
        st.bootstrap_cost.stopped_ms);
    std::printf("engine:        %s\n", st.engine.c_str());
    std::printf("vm stops:      %llu in all (the uname above included), stopped %.1f ms\n",
                static_cast<unsigned long long>(st.vm_cost.stops), st.vm_cost.stopped_ms);
    if (!st.recovered.empty()) std::printf("recovered:     %s\n", st.recovered.c_str());
    return kExitOk;
}

int cmd_cat(GuestFileOps& ops, const std::vector<std::string>& files) {
    int rc = kExitOk;
    for (const auto& f : files) {
        auto data = ops.read_file(f);
        if (!data) {
            int r = fail(f, data.error());
            if (r == kExitUnreachable) return r;
            rc = r;
            continue;
        }
        std::fwrite(data->data(), 1, data->size(), stdout);
    }
    return rc;
}

int cmd_ls(GuestFileOps& ops, const std::string& dir, bool long_format) {
    if (!long_format) {
        auto entries = ops.list_dir(dir);
        if (!entries) return fail(dir, entries.error());
        for (const auto& e : *entries) {
            if (e.name != "." && e.name != "..") std::printf("%s\n", e.name.c_str());
        }
        return kExitOk;
    }
    auto entries = ops.list_dir_with_stats(dir);
    if (!entries) return fail(dir, entries.error());
    for (const auto& e : *entries) {
        if (e.entry.name == "." || e.entry.name == "..") continue;
        if (e.stat) {
            print_stat_line(*e.stat, e.entry.name);
        } else {
            std::printf("?????????? (%s) %s\n", std::strerror(e.stat_errno), e.entry.name.c_str());
        }
    }
    return kExitOk;
}

}  // namespace

const char* self_executable() {
    static char path[4096];
    ssize_t n = ::readlink("/proc/self/exe", path, sizeof path - 1);
    if (n <= 0) return nullptr;
    path[n] = '\0';
    return path;
}

int guest_main(int argc, char** argv) {
    SessionOptions options;
    bool guardian = true;
    static const option longopts[] = {
        {"gdb", required_argument, nullptr, 'g'},
        {"qmp", required_argument, nullptr, 'Q'},
        {"timeout", required_argument, nullptr, 't'},
        {"attach-timeout", required_argument, nullptr, 'A'},
        {"engine", required_argument, nullptr, 'E'},
        {"state-dir", required_argument, nullptr, 's'},
        {"no-guardian", no_argument, nullptr, 'N'},
        {"log-level", required_argument, nullptr, 'L'},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    optind = 1;
    int c;
    // '+': stop at the first non-option, which is the command.
    while ((c = getopt_long(argc, argv, "+h", longopts, nullptr)) != -1) {
        switch (c) {
            case 'g':
                options.gdb_endpoint = optarg;
                break;
            case 'Q':
                options.qmp = optarg;
                break;
            case 't': {
                auto v = parse_u64(optarg);
                if (!v || *v == 0 || *v > 600000) {
                    std::fprintf(stderr, "cloudvmi guest: bad --timeout '%s'\n", optarg);
                    return kExitUsage;
                }
                options.client.connect_timeout = Millis(*v);
                options.client.request_timeout = Millis(*v);
                break;
            }
            case 'A': {
                auto v = parse_u64(optarg);
                if (!v || *v < 100 || *v > 600000) {
                    std::fprintf(stderr,
                                 "cloudvmi guest: bad --attach-timeout '%s' (100..600000)\n",
                                 optarg);
                    return kExitUsage;
                }
                options.shadow.attach_timeout = Millis(*v);
                break;
            }
            case 'E':
                if (std::string_view(optarg) == "mailbox") {
                    options.engine = EngineKind::kMailbox;
                } else if (std::string_view(optarg) == "trap") {
                    options.engine = EngineKind::kTrap;
                } else {
                    std::fprintf(stderr, "cloudvmi guest: bad --engine '%s' (mailbox or trap)\n",
                                 optarg);
                    return kExitUsage;
                }
                break;
            case 's':
                options.state_dir = optarg;
                break;
            case 'N':
                guardian = false;
                break;
            case 'L':
                if (!log::set_level_by_name(optarg)) {
                    std::fprintf(stderr, "cloudvmi guest: bad --log-level '%s'\n", optarg);
                    return kExitUsage;
                }
                break;
            case 'h':
                std::fputs(kGuestUsage, stdout);
                return kExitOk;
            default:
                std::fputs(kGuestUsage, stderr);
                return kExitUsage;
        }
    }
    if (options.gdb_endpoint.empty() || optind >= argc) {
        std::fputs(kGuestUsage, stderr);
        return kExitUsage;
    }
    if (auto e = gdb::Endpoint::parse(options.gdb_endpoint); !e) {
        std::fprintf(stderr, "cloudvmi guest: %s\n", e.error().describe().c_str());
        return kExitUsage;
    }
    std::string cmd = argv[optind];
    std::vector<std::string> args(argv + optind + 1, argv + argc);
    auto usage_error = [&](const char* msg) {
        std::fprintf(stderr, "cloudvmi guest %s: %s\n", cmd.c_str(), msg);
        return kExitUsage;
    };
    // Validate the command line before touching the guest.
    static const char* known[] = {"info", "cat", "ls", "stat", "readlink", "write", "kill"};
    if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return cmd == k; }) ==
        std::end(known)) {
        return usage_error("unknown command (see --help)");
    }
    bool long_format = false;
    bool newline = true;
    if (cmd == "ls" && !args.empty() && args[0] == "-l") {
        long_format = true;
        args.erase(args.begin());
    }
    if (cmd == "write" && !args.empty() && args[0] == "-n") {
        newline = false;
        args.erase(args.begin());
    }
    if ((cmd == "cat" && args.empty()) ||
        ((cmd == "ls" || cmd == "stat" || cmd == "readlink") && args.size() != 1) ||
        (cmd == "write" && args.size() != 2) ||
        (cmd == "kill" && (args.empty() || args.size() > 2)) || (cmd == "info" && !args.empty())) {
        return usage_error("wrong number of arguments (see --help)");
    }
    int64_t kill_pid = 0;
    int kill_sig = SIGTERM;
    if (cmd == "kill") {
        auto pid = parse_u64(args[0]);
        auto sig = args.size() > 1 ? parse_u64(args[1]) : std::optional<uint64_t>(SIGTERM);
        if (!pid || *pid == 0 || *pid > 0x3fffffff || !sig || *sig > 64) {
            return usage_error("PID and SIGNAL must be numbers");
        }
        kill_pid = static_cast<int64_t>(*pid);
        kill_sig = static_cast<int>(*sig);
    }
    if (guardian) {
        const char* self = self_executable();
        if (self == nullptr) {
            std::fprintf(stderr, "cloudvmi: cannot find my own executable for the guardian\n");
            return kExitUnreachable;
        }
        options.guardian_program = self;
    }
    options.linger = Millis(0);

    GuestSession session(options);
    if (auto a = session.attach(); !a)
        return fail("attaching to " + options.gdb_endpoint, a.error());
    GuestFileOps ops(session);
    int rc = kExitOk;
    if (cmd == "info") {
        rc = cmd_info(session, ops);
    } else if (cmd == "cat") {
        rc = cmd_cat(ops, args);
    } else if (cmd == "ls") {
        rc = cmd_ls(ops, args[0], long_format);
    } else if (cmd == "stat") {
        auto st = ops.stat(args[0]);
        if (!st) {
            rc = fail(args[0], st.error());
        } else {
            std::printf(
                "  mode: %s (%o)\n  size: %lld\n  uid: %u gid: %u\n  links: %llu\n"
                "  inode: %llu\n  mtime: %lld.%09lld\n",
                mode_string(st->mode).c_str(), st->mode, static_cast<long long>(st->size), st->uid,
                st->gid, static_cast<unsigned long long>(st->nlink),
                static_cast<unsigned long long>(st->ino), static_cast<long long>(st->mtime_sec),
                static_cast<long long>(st->mtime_nsec));
        }
    } else if (cmd == "readlink") {
        auto t = ops.readlink(args[0]);
        if (!t) {
            rc = fail(args[0], t.error());
        } else {
            std::printf("%s\n", t->c_str());
        }
    } else if (cmd == "write") {
        std::string value = args[1] + (newline ? "\n" : "");
        auto n = ops.write_file(args[0], std::vector<uint8_t>(value.begin(), value.end()));
        if (!n) {
            rc = fail(args[0], n.error());
        } else if (*n != value.size()) {
            std::fprintf(stderr, "cloudvmi: %s: short write (%zu of %zu bytes)\n", args[0].c_str(),
                         *n, value.size());
            rc = kExitGuestError;
        }
    } else if (cmd == "kill") {
        if (auto k = ops.kill(kill_pid, kill_sig); !k) rc = fail("kill", k.error());
    }
    std::fflush(stdout);
    if (auto d = session.detach(); !d) {
        std::fprintf(stderr, "cloudvmi: detaching: %s\n", d.error().describe().c_str());
        if (rc == kExitOk) rc = kExitUnreachable;
    }
    return rc;
}

}  // namespace cloudvmi::cli
