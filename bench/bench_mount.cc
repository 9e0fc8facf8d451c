// cloudvmi-bench-mount: what operators' commands cost through the /vmi mount, against the
// same system calls executed natively inside the same guest in the same run, with one VM
// and with two VMs served at once.
//
//   cat proc/meminfo          open + read + close
//   ls -l proc                getdents64 + one lstat per entry
//   grep -r . proc/sys        every directory listed, every file opened, read and closed
//
// Native costs are measured by the guest itself (clock_gettime around the syscalls, run
// back to back in one batch by the shadow) before the mount starts; the mount is then
// driven with ordinary file syscalls from this process.
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_support.h"
#include "common/deadline.h"
#include "common/strings.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;
using B = SyscallBatch;
using bench::add_cat;
using bench::add_ls_l;
using bench::die;
using bench::FailedOps;
using bench::guest_ns;
using bench::must;
using bench::native_us;

namespace {

constexpr const char* kProgram = "cloudvmi-bench-mount";

double median(std::vector<double> v) {
    return bench::summarize(std::move(v)).median;
}

struct Native {
    double cat_us = 0;
    double ls_us = 0;
    double grep_ms = 0;
    size_t sys_files = 0, sys_dirs = 0;
};

void walk_guest(GuestFileOps& ops, const std::string& dir, std::vector<std::string>& files,
                std::vector<std::string>& dirs) {
    dirs.push_back(dir);
    auto entries = ops.list_dir_with_stats(dir);
    if (!entries) return;
    for (const auto& e : *entries) {
        if (e.entry.name == "." || e.entry.name == ".." || !e.stat) continue;
        std::string p = dir + "/" + e.entry.name;
        if (S_ISDIR(e.stat->mode)) {
            walk_guest(ops, p, files, dirs);
        } else if (S_ISREG(e.stat->mode) && (e.stat->mode & 0444)) {
            files.push_back(p);
        }
    }
}

Native measure_native(const std::string& gdb, const std::string& state_dir,
                      const std::string& guardian) {
    SessionOptions o;
    o.gdb_endpoint = gdb;
    o.state_dir = state_dir;
    o.guardian_program = guardian;
    GuestSession s(o);
    GuestFileOps ops(s);
    Native n;
    n.cat_us = native_us(kProgram, s, 5, 50, [](SyscallBatch& b) { add_cat(b, "/proc/meminfo"); });
    auto proc = must(kProgram, ops.list_dir("/proc"), "listing /proc");
    n.ls_us = native_us(
        kProgram, s, 5, 1, [&](SyscallBatch& b) { add_ls_l(b, "/proc", proc); },
        FailedOps::kExpected);
    std::vector<std::string> files, dirs;
    walk_guest(ops, "/proc/sys", files, dirs);
    n.sys_files = files.size();
    n.sys_dirs = dirs.size();
    double ns = 0;
    for (size_t i = 0; i < files.size(); i += 60) {
        ns += guest_ns(
            kProgram, s, 1,
            [&](SyscallBatch& b) {
                for (size_t k = i; k < files.size() && k < i + 60; ++k)
                    add_cat(b, files[k]);
            },
            FailedOps::kExpected);
    }
    for (size_t i = 0; i < dirs.size(); i += 60) {
        ns += guest_ns(
            kProgram, s, 1,
            [&](SyscallBatch& b) {
                for (size_t k = i; k < dirs.size() && k < i + 60; ++k) {
                    auto p = b.input_string(dirs[k]);
                    auto open = b.add(x86abi::kOpenat, {B::imm_signed(x86abi::kAtFdcwd), B::buf(p),
                                                        B::imm(x86abi::kODirectory)});
                    auto buf = b.output(8192);
                    b.add(x86abi::kGetdents64, {B::result_of(open), B::buf(buf), B::imm(8192)});
                    b.add(x86abi::kClose, {B::result_of(open)});
                }
            },
            FailedOps::kExpected);
    }
    n.grep_ms = ns / 1e6;
    must(kProgram, s.detach(), "detach");
    return n;
}

// --- through the mount ---

double cat_once(const std::string& path) {
    auto start = Clock::now();
    int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) die(kProgram, "open " + path + ": " + std::strerror(errno));
    char buf[65536];
    while (::read(fd, buf, sizeof buf) > 0) {
    }
    ::close(fd);
    return elapsed_ms(start);
}

double ls_l_once(const std::string& dir) {
    auto start = Clock::now();
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) die(kProgram, "opendir " + dir + ": " + std::strerror(errno));
    struct stat st {};
    while (dirent* e = ::readdir(d)) {
        std::string p = dir + "/" + e->d_name;
        ::lstat(p.c_str(), &st);
    }
    ::closedir(d);
    return elapsed_ms(start);
}

void grep_walk(const std::string& dir, size_t& files) {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return;
    while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n == "." || n == "..") continue;
        std::string p = dir + "/" + n;
        if (e->d_type == DT_DIR) {
            grep_walk(p, files);
        } else if (e->d_type == DT_REG) {
            int fd = ::open(p.c_str(), O_RDONLY | O_NONBLOCK);
            if (fd < 0) continue;  // write-only sysctls, as grep -r skips them
            char buf[65536];
            while (::read(fd, buf, sizeof buf) > 0) {
            }
            ::close(fd);
            ++files;
        }
    }
    ::closedir(d);
}

double grep_once(const std::string& dir, size_t* files_out) {
    auto start = Clock::now();
    size_t files = 0;
    grep_walk(dir, files);
    if (files_out) *files_out = files;
    return elapsed_ms(start);
}

struct MountFigures {
    double cat_ms = 0, ls_ms = 0, grep_ms = 0;
    size_t grep_files = 0;
};

MountFigures measure_mount(const std::string& vmdir, int iterations) {
    MountFigures f;
    cat_once(vmdir + "/proc/meminfo");  // attach
    std::vector<double> cats, lss, greps;
    for (int i = 0; i < iterations; ++i)
        cats.push_back(cat_once(vmdir + "/proc/meminfo"));
    for (int i = 0; i < std::max(9, iterations / 5); ++i)
        lss.push_back(ls_l_once(vmdir + "/proc"));
    for (int i = 0; i < 3; ++i)
        greps.push_back(grep_once(vmdir + "/proc/sys", &f.grep_files));
    f.cat_ms = median(cats);
    f.ls_ms = median(lss);
    f.grep_ms = median(greps);
    return f;
}

bool mounted(const std::string& mountpoint) {
    std::ifstream f("/proc/self/mounts");
    std::string line;
    while (std::getline(f, line)) {
        if (line.find(" " + mountpoint + " fuse") != std::string::npos) return true;
    }
    return false;
}

const char kUsage[] =
    "Usage: cloudvmi-bench-mount --gdb ENDPOINT [--gdb ENDPOINT2] [--iterations N] [--cloudvmi "
    "PATH]\n"
    "Measures cat, ls -l and grep -r through a /vmi mount of one VM, then of two at once,\n"
    "against the same syscalls executed natively inside each guest in the same run.\n"
    "  --cloudvmi  the cloudvmi binary to mount with (default: the one next to this)\n";

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> gdbs;
    std::string cloudvmi;
    int iterations = 100;
    static const option longopts[] = {
        {"gdb", required_argument, nullptr, 'g'},
        {"cloudvmi", required_argument, nullptr, 'c'},
        {"iterations", required_argument, nullptr, 'n'},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, nullptr)) != -1) {
        switch (c) {
            case 'g':
                gdbs.push_back(optarg);
                break;
            case 'c':
                cloudvmi = optarg;
                break;
            case 'n':
                iterations = static_cast<int>(parse_u64(optarg).value_or(100));
                break;
            case 'h':
                std::fputs(kUsage, stdout);
                return 0;
            default:
                std::fputs(kUsage, stderr);
                return 2;
        }
    }
    if (cloudvmi.empty()) cloudvmi = bench::sibling_cloudvmi();
    if (gdbs.empty() || gdbs.size() > 2 || cloudvmi.empty()) {
        std::fputs(kUsage, stderr);
        return 2;
    }
    char tmpl[] = "/tmp/cloudvmi-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) die(kProgram, "mkdtemp");
    std::string dir = tmpl, state = dir + "/state", mnt = dir + "/vmi";
    ::mkdir(mnt.c_str(), 0755);

    std::vector<Native> native;
    for (const auto& g : gdbs)
        native.push_back(measure_native(g, state, cloudvmi));

    std::ofstream(dir + "/cloudvmi.yaml") << "node: bench\nstate_dir: " << state << "\nvms:\n";
    for (size_t i = 0; i < gdbs.size(); ++i) {
        std::ofstream(dir + "/cloudvmi.yaml", std::ios::app)
            << "  - name: vm" << i << "\n    gdb: " << gdbs[i] << "\n";
    }
    pid_t pid = ::fork();
    if (pid == 0) {
        int fd = ::open((dir + "/mount.log").c_str(), O_WRONLY | O_CREAT, 0644);
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::execl(cloudvmi.c_str(), cloudvmi.c_str(), "-f", "--config",
                (dir + "/cloudvmi.yaml").c_str(), mnt.c_str(), static_cast<char*>(nullptr));
        ::_exit(127);
    }
    auto deadline = Deadline::after_ms(10000);
    while (!mounted(mnt) && !deadline.expired())
        std::this_thread::sleep_for(Millis(50));
    if (!mounted(mnt)) die(kProgram, "the mount did not come up (see " + dir + "/mount.log)");

    std::string vm0 = mnt + "/bench/vm0";
    MountFigures one = measure_mount(vm0, iterations);
    std::vector<MountFigures> two(gdbs.size());
    double two_wall_ms = 0;
    if (gdbs.size() == 2) {
        auto start = Clock::now();
        std::vector<std::thread> threads;
        for (size_t i = 0; i < 2; ++i) {
            threads.emplace_back([&, i] {
                two[i] = measure_mount(mnt + "/bench/vm" + std::to_string(i), iterations);
            });
        }
        for (auto& t : threads)
            t.join();
        two_wall_ms = elapsed_ms(start);
    }
    std::string stats;
    {
        std::ifstream f(vm0 + "/.cloudvmi/stats");
        std::stringstream ss;
        ss << f.rdbuf();
        stats = ss.str();
    }
    ::system(("fusermount3 -u '" + mnt + "'").c_str());
    ::waitpid(pid, nullptr, 0);

    auto row = [](const char* what, double mount_ms, double native_ms) {
        std::printf("%-36s %12.2f ms %12.3f ms %10.1fx\n", what, mount_ms, native_ms,
                    native_ms > 0 ? mount_ms / native_ms : 0.0);
    };
    std::printf("CloudVMI /vmi mount benchmark (trap engine; medians)\n");
    std::printf("proc/sys: %zu readable files in %zu directories (guest view)\n\n",
                native[0].sys_files, native[0].sys_dirs);
    std::printf("%-36s %15s %15s %11s\n", "one VM", "through /vmi", "native", "ratio");
    row("cat proc/meminfo", one.cat_ms, native[0].cat_us / 1000);
    row("ls -l proc", one.ls_ms, native[0].ls_us / 1000);
    row("grep -r . proc/sys", one.grep_ms, native[0].grep_ms);
    std::printf("  (%.2f ms per file through /vmi over %zu files)\n",
                one.grep_ms / std::max<size_t>(1, one.grep_files), one.grep_files);
    if (gdbs.size() == 2) {
        std::printf("\n%-36s %15s %15s %11s\n", "two VMs at once (per VM)", "through /vmi",
                    "native", "ratio");
        for (size_t i = 0; i < 2; ++i) {
            std::string t = "vm" + std::to_string(i) + ": ";
            row((t + "cat proc/meminfo").c_str(), two[i].cat_ms, native[i].cat_us / 1000);
            row((t + "ls -l proc").c_str(), two[i].ls_ms, native[i].ls_us / 1000);
            row((t + "grep -r . proc/sys").c_str(), two[i].grep_ms, native[i].grep_ms);
        }
        std::printf("  both VMs' whole runs took %.0f ms together\n", two_wall_ms);
    }
    std::printf(
        "\nnative = the guest's own cost of the same syscalls (clock_gettime in the guest)\n");
    std::printf("vm0 session stats after the run:\n%s", stats.c_str());
    return 0;
}
