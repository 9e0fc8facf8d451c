// Who may use the mount (fs/access.h).
#include <catch2/catch.hpp>

#include "fs/access.h"
#include "fs/consuming_reads.h"
#include "fs/fuse_errno.h"

using namespace cloudvmi::fs;

TEST_CASE("access: root only by default", "[fs]") {
    AccessRule none;
    CHECK(may_access(none, Caller{0, 0, {}}, Exposure::kGuestData));
    CHECK(may_access(none, Caller{0, 0, {}}, Exposure::kKernelAddresses));
    CHECK_FALSE(may_access(none, Caller{1000, 1000, {}}, Exposure::kGuestData));
    // Group 0 is not root: only uid 0 is.
    CHECK_FALSE(may_access(none, Caller{1000, 0, {0}}, Exposure::kGuestData));
}

TEST_CASE("access: the operators group reads guests, not kernel addresses", "[fs]") {
    AccessRule ops{.operators = 4242};
    CHECK(may_access(ops, Caller{1000, 4242, {}}, Exposure::kGuestData));
    CHECK(may_access(ops, Caller{1000, 1000, {27, 4242}}, Exposure::kGuestData));
    CHECK_FALSE(may_access(ops, Caller{1000, 4242, {}}, Exposure::kKernelAddresses));
    CHECK_FALSE(may_access(ops, Caller{1001, 1001, {27}}, Exposure::kGuestData));
    CHECK(may_access(ops, Caller{0, 0, {}}, Exposure::kKernelAddresses));
}

TEST_CASE("errno at the FUSE boundary: the guest's own, or EIO outside what FUSE takes", "[fs]") {
    using cloudvmi::Error;
    CHECK(fuse_errno(Error(ENOENT, "x")) == ENOENT);
    CHECK(fuse_errno(Error(511, "x")) == 511);
    CHECK(fuse_errno(Error(512, "x")) == EIO);  // ERESTARTSYS: the kernel rejects it
    CHECK(fuse_errno(Error(600, "a hostile guest's errno")) == EIO);
    CHECK(fuse_errno(Error(0, "x")) == EIO);
    CHECK(fuse_errno(Error(-5, "x")) == EIO);
}

TEST_CASE("consuming reads: the kernel log and the tracing pipes", "[fs]") {
    CHECK(consumes_on_read("/proc/kmsg"));
    CHECK(consumes_on_read("/sys/kernel/tracing/trace_pipe"));
    CHECK(consumes_on_read("/sys/kernel/debug/tracing/per_cpu/cpu0/trace_pipe_raw"));
    CHECK_FALSE(consumes_on_read("/proc/meminfo"));
    CHECK_FALSE(consumes_on_read("/sys/kernel/tracing/trace"));
    CHECK_FALSE(consumes_on_read("/proc/kmsg2"));
}
