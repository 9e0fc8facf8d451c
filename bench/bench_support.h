// What both benchmarks share: summary statistics, the guest-side measurement of native
// costs, and the guardian that keeps a guest safe if a benchmark is interrupted (without
// one, QEMU leaves the VM paused when we die).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "common/error.h"
#include "common/stats.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"
#include "redirector/shadow/syscall_batch.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi::bench {

struct Stats {
    double median = 0, p99 = 0, min = 0;
    size_t n = 0;
};

inline Stats summarize(std::vector<double> v) {
    Stats s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    s.n = v.size();
    s.min = v.front();
    s.median = nearest_rank(v, 0.50);
    s.p99 = nearest_rank(v, 0.99);
    return s;
}

[[noreturn]] inline void die(const char* program, const std::string& what) {
    std::fprintf(stderr, "%s: %s\n", program, what.c_str());
    std::exit(1);
}

template <class T>
T must(const char* program, ErrorOr<T> r, const std::string& what) {
    if (!r) die(program, what + ": " + r.error().describe());
    return std::move(*r);
}

inline void must(const char* program, ErrorOr<void> r, const std::string& what) {
    if (!r) die(program, what + ": " + r.error().describe());
}

// Whether a failed op in a native measurement makes the figure meaningless.
enum class FailedOps {
    kFatal,  // the work is meant to succeed; failing ops would measure something else
    // Failures are part of the work: some readable-looking files fail their read (an unset
    // net/ipv6/conf/*/stable_secret gives EIO), and grep -r through /vmi meets them too.
    kExpected,
};

// Runs `body` (which adds ops to the batch) `reps` times inside one batch, bracketed by two
// clock_gettime calls; returns the guest-measured nanoseconds per repetition. The clock
// calls must succeed whatever `failures` says: the figure is read from them.
inline double guest_ns(const char* program, GuestSession& s, int reps,
                       const std::function<void(SyscallBatch&)>& body,
                       FailedOps failures = FailedOps::kFatal) {
    using B = SyscallBatch;
    SyscallBatch b;
    auto t0 = b.output(sizeof(x86abi::Timespec));
    auto op0 = b.add(x86abi::kClockGettime, {B::imm(1), B::buf(t0)});  // CLOCK_MONOTONIC
    b.filled_by(t0, op0, B::Fill::kWhole);
    for (int i = 0; i < reps; ++i)
        body(b);
    auto t1 = b.output(sizeof(x86abi::Timespec));
    auto op1 = b.add(x86abi::kClockGettime, {B::imm(1), B::buf(t1)});
    b.filled_by(t1, op1, B::Fill::kWhole);
    auto out = must(program, s.run(b), "native measurement batch");
    for (size_t i = 0; i < out.results.size(); ++i) {
        bool clock = i == op0 || i == op1;
        if (out.failed(i) && (clock || failures == FailedOps::kFatal)) {
            die(program,
                "native op " + std::to_string(i) + " failed: " + std::strerror(out.error_of(i)));
        }
    }
    x86abi::Timespec a{}, z{};
    std::memcpy(&a, out.bytes(t0).data(), sizeof a);
    std::memcpy(&z, out.bytes(t1).data(), sizeof z);
    double ns = static_cast<double>((z.tv_sec - a.tv_sec) * 1000000000LL + (z.tv_nsec - a.tv_nsec));
    return ns / reps;
}

// Median of `runs` native measurements (one batch each), in microseconds.
inline double native_us(const char* program, GuestSession& s, int runs, int reps,
                        const std::function<void(SyscallBatch&)>& body,
                        FailedOps failures = FailedOps::kFatal) {
    std::vector<double> v;
    for (int i = 0; i < runs; ++i)
        v.push_back(guest_ns(program, s, reps, body, failures) / 1000);
    return summarize(std::move(v)).median;
}

// cat: open + read of one page + close.
inline void add_cat(SyscallBatch& b, const std::string& path) {
    using B = SyscallBatch;
    auto p = b.input_string(path);
    auto open = b.add(x86abi::kOpenat, {B::imm_signed(x86abi::kAtFdcwd), B::buf(p), B::imm(0)});
    auto buf = b.output(4096);
    b.add(x86abi::kRead, {B::result_of(open), B::buf(buf), B::imm(4096)});
    b.add(x86abi::kClose, {B::result_of(open)});
}

// With the two clocks and open + getdents + close this keeps an ls -l batch within the
// shadow's SHADOW_MAX_OPS (204).
constexpr size_t kMaxLsStats = 190;

// ls -l: open + getdents64 + close of `dir`, then an lstat of each of the first
// kMaxLsStats `entries` (listed beforehand, so the batch's size is known). Measure it with
// FailedOps::kExpected: a process listed beforehand may have exited (ls -l meets that too).
inline void add_ls_l(SyscallBatch& b, const std::string& dir,
                     const std::vector<GuestDirEntry>& entries) {
    using B = SyscallBatch;
    auto p = b.input_string(dir);
    auto open = b.add(x86abi::kOpenat,
                      {B::imm_signed(x86abi::kAtFdcwd), B::buf(p), B::imm(x86abi::kODirectory)});
    auto buf = b.output(64 * 1024);
    b.add(x86abi::kGetdents64, {B::result_of(open), B::buf(buf), B::imm(64 * 1024)});
    b.add(x86abi::kClose, {B::result_of(open)});
    for (size_t i = 0; i < std::min(entries.size(), kMaxLsStats); ++i) {
        auto q = b.input_string(dir + "/" + entries[i].name);
        auto st = b.output(sizeof(x86abi::Stat));
        b.add(x86abi::kNewfstatat, {B::imm_signed(x86abi::kAtFdcwd), B::buf(q), B::buf(st),
                                    B::imm(x86abi::kAtSymlinkNofollow)});
    }
}

// The cloudvmi binary built next to this benchmark, which serves as the guardian; "" if
// there is none.
inline std::string sibling_cloudvmi() {
    char self[4096] = {};
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return "";
    std::string path(self, static_cast<size_t>(n));
    path = path.substr(0, path.rfind('/') + 1) + "cloudvmi";
    return ::access(path.c_str(), X_OK) == 0 ? path : "";
}

}  // namespace cloudvmi::bench
