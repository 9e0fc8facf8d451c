// cloudvmi-bench: what redirected syscalls cost, against the same work done natively inside
// the same guest in the same run.
//
// "Native" is measured by the guest itself: one batch brackets N repetitions of the work
// with clock_gettime(CLOCK_MONOTONIC) calls, all executed back to back by the guest kernel
// in the shadow process, so the figure is the guest's own cost with no host in the loop.
#include <getopt.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_support.h"
#include "common/deadline.h"
#include "common/log.h"
#include "common/strings.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;
using B = SyscallBatch;
using bench::add_cat;
using bench::add_ls_l;
using bench::FailedOps;
using bench::must;
using bench::native_us;
using bench::Stats;
using bench::summarize;

namespace {

constexpr const char* kProgram = "cloudvmi-bench";

std::vector<double> time_ms(int n, const std::function<void()>& f, int pause_ms = 0) {
    std::vector<double> v;
    for (int i = 0; i < n; ++i) {
        if (pause_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
        auto start = Clock::now();
        f();
        v.push_back(elapsed_ms(start));
    }
    return v;
}

void row(const char* what, const Stats& host, double native_us) {
    double host_us = host.median * 1000;
    std::printf("%-34s %10.1f us %10.1f us %10.2f us %10.1fx\n", what, host_us, host.p99 * 1000,
                native_us, native_us > 0 ? host_us / native_us : 0.0);
}

const char kUsage[] =
    "Usage: cloudvmi-bench --gdb ENDPOINT [--iterations N] [--state-dir DIR] [--guardian PROGRAM]\n"
    "  --guardian  the cloudvmi binary that guards the guest (default: the one next to this)\n"
    "Measures CloudVMI's redirected syscalls against the same work done natively in the guest.\n";

}  // namespace

int main(int argc, char** argv) {
    SessionOptions options;
    int iterations = 200;
    static const option longopts[] = {
        {"gdb", required_argument, nullptr, 'g'},
        {"iterations", required_argument, nullptr, 'n'},
        {"state-dir", required_argument, nullptr, 's'},
        {"guardian", required_argument, nullptr, 'G'},
        {"help", no_argument, nullptr, 'h'},
        {nullptr, 0, nullptr, 0},
    };
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, nullptr)) != -1) {
        switch (c) {
            case 'g':
                options.gdb_endpoint = optarg;
                break;
            case 'n':
                iterations = static_cast<int>(parse_u64(optarg).value_or(200));
                break;
            case 's':
                options.state_dir = optarg;
                break;
            case 'G':
                options.guardian_program = optarg;
                break;
            case 'h':
                std::fputs(kUsage, stdout);
                return 0;
            default:
                std::fputs(kUsage, stderr);
                return 2;
        }
    }
    if (options.gdb_endpoint.empty()) {
        std::fputs(kUsage, stderr);
        return 2;
    }
    if (options.guardian_program.empty()) options.guardian_program = bench::sibling_cloudvmi();

    // 1. Bootstrap: hijack, shadow creation (a fresh session each time).
    std::vector<double> hijack, catch_ms, total;
    for (int i = 0; i < 3; ++i) {
        GuestSession s(options);
        auto start = Clock::now();
        must(kProgram, s.attach(), "attach");
        double attach_ms = elapsed_ms(start);
        auto st = s.status();
        hijack.push_back(st.bootstrap.hijack_ms);
        catch_ms.push_back(st.bootstrap.first_catch_ms);
        total.push_back(attach_ms);
        must(kProgram, s.detach(), "detach");
    }

    GuestSession session(options);
    GuestFileOps ops(session);
    auto uts = must(kProgram, ops.uname(), "uname");

    // 2. Native costs, measured by the guest.
    double native_getpid =
        native_us(kProgram, session, 7, 200, [](SyscallBatch& b) { b.add(x86abi::kGetpid, {}); });
    double native_cat =
        native_us(kProgram, session, 7, 60, [](SyscallBatch& b) { add_cat(b, "/proc/meminfo"); });
    double native_stat = native_us(kProgram, session, 7, 150, [](SyscallBatch& b) {
        auto p = b.input_string("/proc/self/status");
        auto st = b.output(sizeof(x86abi::Stat));
        b.add(x86abi::kNewfstatat,
              {B::imm_signed(x86abi::kAtFdcwd), B::buf(p), B::buf(st), B::imm(0)});
    });
    auto proc = must(kProgram, ops.list_dir("/proc"), "listing /proc");
    double native_ls = native_us(
        kProgram, session, 5, 1, [&](SyscallBatch& b) { add_ls_l(b, "/proc", proc); },
        FailedOps::kExpected);

    // 3. The same work through CloudVMI, one request at a time as a client would issue it.
    SyscallBatch getpid_batch;
    getpid_batch.add(x86abi::kGetpid, {});
    auto burst_getpid = summarize(
        time_ms(iterations, [&] { must(kProgram, session.run(getpid_batch), "getpid"); }));
    auto burst_cat = summarize(
        time_ms(iterations, [&] { must(kProgram, ops.read_file("/proc/meminfo"), "cat"); }));
    auto burst_stat = summarize(
        time_ms(iterations, [&] { must(kProgram, ops.stat("/proc/self/status"), "stat"); }));
    auto ls = summarize(time_ms(std::max(5, iterations / 20), [&] {
        must(kProgram, ops.list_dir_with_stats("/proc"), "ls -l /proc");
    }));
    // Isolated requests: the shadow has been parked and must be caught again first.
    auto idle_getpid = summarize(time_ms(
        std::max(10, iterations / 5), [&] { must(kProgram, session.run(getpid_batch), "getpid"); },
        100));
    auto idle_cat = summarize(time_ms(
        std::max(10, iterations / 5),
        [&] { must(kProgram, ops.read_file("/proc/meminfo"), "cat"); }, 100));

    auto st = session.status();
    std::printf("CloudVMI redirector benchmark (trap engine: gdbstub breakpoints)\n");
    std::printf("guest: %s %s %s, %s\n", uts.sysname.c_str(), uts.release.c_str(),
                uts.machine.c_str(), options.gdb_endpoint.c_str());
    std::printf("kernel entry %s, pti %s, shadow pid %lld\n\n",
                hex_u64(st.kernel.syscall_entry).c_str(), st.kernel.pti ? "on" : "off",
                static_cast<long long>(st.shadow_pid));
    auto b_hijack = summarize(hijack), b_catch = summarize(catch_ms), b_total = summarize(total);
    std::printf("bootstrap (n=%zu)                    median      min\n", b_total.n);
    std::printf("  time to first hijack           %8.1f ms %8.1f ms\n", b_hijack.median,
                b_hijack.min);
    std::printf("  shadow caught after release    %8.1f ms %8.1f ms\n", b_catch.median,
                b_catch.min);
    std::printf("  attach total (discovery..park) %8.1f ms %8.1f ms\n\n", b_total.median,
                b_total.min);
    std::printf("%-34s %13s %13s %13s %11s\n", "operation", "cloudvmi p50", "cloudvmi p99",
                "native", "ratio");
    row("getpid, back to back", burst_getpid, native_getpid);
    row("cat /proc/meminfo, back to back", burst_cat, native_cat);
    row("stat /proc/self/status", burst_stat, native_stat);
    row("ls -l /proc (getdents + stats)", ls, native_ls);
    row("getpid, isolated (after 100 ms)", idle_getpid, native_getpid);
    row("cat /proc/meminfo, isolated", idle_cat, native_cat);
    std::printf(
        "\nnative = the guest's own cost, measured in the guest with clock_gettime around %s\n",
        "N repetitions in one batch; ratio = cloudvmi p50 / native");
    std::printf("(%zu pid directories in /proc; %d iterations; linger %lld ms)\n", proc.size(),
                iterations, static_cast<long long>(options.linger.count()));
    return 0;
}
