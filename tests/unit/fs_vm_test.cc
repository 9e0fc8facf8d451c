// fs/vm.h: a VM's request statistics, without a guest (nothing here attaches).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fs/vm.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using namespace std::chrono_literals;

namespace {

using cloudvmi::test::TempDir;

VmConfig unreachable_vm(const std::string& name) {
    VmConfig c;
    c.name = name;
    c.gdb = "unix:/nonexistent/" + name + ".gdb";
    return c;
}

SessionOptions base_options(const std::string& state_dir) {
    SessionOptions o;
    o.state_dir = state_dir;
    o.guardian_program = "";
    o.attach_timeout = Millis(500);
    return o;
}

// Destroys `vm` on another thread and says whether that finished within `limit`.
bool destroys_within(std::unique_ptr<Vm> vm, std::chrono::milliseconds limit) {
    auto done = std::make_shared<std::promise<void>>();
    auto fut = done->get_future();
    std::thread([vm = std::move(vm), done]() mutable {
        vm.reset();
        done->set_value();
    }).detach();
    return fut.wait_for(limit) == std::future_status::ready;
}

}  // namespace

TEST_CASE("Vm: construction keeps the configuration and contacts nothing", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));
    CHECK(vm->name() == "vm-a");
    CHECK(vm->node() == "n1");
    CHECK(vm->config().gdb == "unix:/nonexistent/vm-a.gdb");
    CHECK(vm->session().options().gdb_endpoint == "unix:/nonexistent/vm-a.gdb");
    CHECK(vm->session().options().state_dir == dir.path());
    CHECK(vm->session().state() == SessionState::kDetached);

    CacheConfig c;
    c.proc_attr = 9;
    vm->set_cache(c);
    CHECK(vm->cache().proc_attr == 9);

    auto s = vm->stats();
    CHECK(s.requests == 0);
    CHECK(s.errors == 0);
    CHECK(s.guest_errors == 0);
    CHECK(s.p50_ms == 0);
    CHECK(s.p99_ms == 0);
    CHECK(s.max_ms == 0);
    CHECK(s.queued == 0);

    CHECK(destroys_within(std::move(vm), 10s));
    CHECK(dir.empty());  // no lock, no log: the guest was never approached
}

TEST_CASE("Vm::record and stats: latency percentiles", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));

    // 1..100 ms, in a scrambled order.
    for (int i = 0; i < 100; ++i)
        vm->record(static_cast<double>((i * 37) % 100 + 1), nullptr);
    auto s = vm->stats();
    CHECK(s.requests == 100);
    CHECK(s.errors == 0);
    CHECK(s.guest_errors == 0);
    CHECK(s.max_ms == 100);
    // Nearest rank: the smallest value with at least p of the samples at or below it.
    CHECK(s.p50_ms == 50);
    CHECK(s.p90_ms == 90);
    CHECK(s.p99_ms == 99);
    CHECK(s.p50_ms <= s.p90_ms);
    CHECK(s.p90_ms <= s.p99_ms);
    CHECK(s.p99_ms <= s.max_ms);

    SECTION("a single sample is every percentile") {
        auto one = std::make_unique<Vm>("n1", unreachable_vm("vm-b"), base_options(dir.path()));
        one->record(7.5, nullptr);
        auto o = one->stats();
        CHECK(o.requests == 1);
        CHECK(o.p50_ms == 7.5);
        CHECK(o.p90_ms == 7.5);
        CHECK(o.p99_ms == 7.5);
        CHECK(o.max_ms == 7.5);
        CHECK(destroys_within(std::move(one), 10s));
    }
    SECTION("a few slow requests show in p99, not in p50") {
        auto v = std::make_unique<Vm>("n1", unreachable_vm("vm-c"), base_options(dir.path()));
        for (int i = 0; i < 980; ++i)
            v->record(1.0, nullptr);
        for (int i = 0; i < 20; ++i)
            v->record(500.0, nullptr);
        auto o = v->stats();
        CHECK(o.p50_ms == 1.0);
        CHECK(o.p90_ms == 1.0);
        CHECK(o.p99_ms == 500.0);
        CHECK(o.max_ms == 500.0);
        CHECK(destroys_within(std::move(v), 10s));
    }
    CHECK(destroys_within(std::move(vm), 10s));
}

TEST_CASE("Vm::stats: percentiles cover recent requests, max and counts all of them", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));
    // An old slow period, then a long fast one: the window (4096) forgets the old one.
    for (int i = 0; i < 5000; ++i)
        vm->record(1000.0, nullptr);
    for (int i = 0; i < 5000; ++i)
        vm->record(2.0, nullptr);
    auto s = vm->stats();
    CHECK(s.requests == 10000);
    CHECK(s.p50_ms == 2.0);
    CHECK(s.p99_ms == 2.0);
    CHECK(s.max_ms == 1000.0);
    CHECK(destroys_within(std::move(vm), 10s));
}

TEST_CASE("Vm::record: guest errors and our own errors are counted apart", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));
    Error enoent = Error::guest(ENOENT, "no such file in the guest");
    Error eacces = Error::guest(EACCES, "guest said no");
    Error timeout(ETIMEDOUT, "the VM did not answer");
    Error notconn(ENOTCONN, "no gdbstub");

    vm->record(1, nullptr);
    vm->record(2, &enoent);
    vm->record(3, &eacces);
    vm->record(4, &timeout);
    vm->record(5, nullptr);
    vm->record(6, &notconn);
    vm->record(7, &enoent);

    auto s = vm->stats();
    CHECK(s.requests == 7);
    CHECK(s.guest_errors == 3);
    CHECK(s.errors == 2);
    CHECK(s.max_ms == 7);
    CHECK(destroys_within(std::move(vm), 10s));
}

TEST_CASE("Vm::record is safe from several threads", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));
    Error g = Error::guest(ENOENT, "x");
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
        threads.emplace_back([&, t] {
            for (int i = 0; i < 2000; ++i) {
                vm->record(static_cast<double>(t + 1), i % 4 == 0 ? &g : nullptr);
                if (i % 100 == 0) (void)vm->stats();
            }
        });
    }
    for (auto& th : threads)
        th.join();
    auto s = vm->stats();
    CHECK(s.requests == 8000);
    CHECK(s.guest_errors == 2000);
    CHECK(s.errors == 0);
    CHECK(s.max_ms == 4);
    CHECK(destroys_within(std::move(vm), 10s));
}

TEST_CASE("Vm::shutdown stops its queue and is idempotent", "[fs]") {
    TempDir dir{"cloudvmi-fs-vm"};
    auto vm = std::make_unique<Vm>("n1", unreachable_vm("vm-a"), base_options(dir.path()));
    vm->shutdown();
    auto job =
        std::make_shared<Job>([](Job&) {}, [](int, bool) {}, nullptr, Clock::time_point::max());
    CHECK_FALSE(vm->executor().submit(job));
    vm->shutdown();
    CHECK(vm->session().state() == SessionState::kDetached);
    CHECK(destroys_within(std::move(vm), 10s));
}

TEST_CASE("vm_error: refusals and the guest's errno pass, our own failures are masked", "[fs]") {
    // A guest kernel not recognised (during a reboot, say) is our failure: EIO, as before.
    CHECK(vm_error(Error(ENOTSUP, "guest kernel not recognised")).code() == EIO);
    CHECK(vm_error(Error(EINVAL, "internal")).code() == EIO);
    CHECK(vm_error(Error::refusal(EOPNOTSUPP, "a FIFO is not changed")).code() == EOPNOTSUPP);
    CHECK(vm_error(Error::refusal(EINVAL, "bad name")).code() == EINVAL);
    CHECK(vm_error(Error::guest(ELOOP, "symlink on the way")).code() == ELOOP);
    CHECK(vm_error(Error(ECONNRESET, "stub gone")).code() == ENOTCONN);
    // Kinds, not errno values: our internal EAGAIN, EBUSY, E2BIG are failures (EIO); the
    // same errnos given on purpose are answers.
    CHECK(vm_error(Error(EAGAIN, "withdrawn")).code() == EIO);
    CHECK(vm_error(Error(EBUSY, "internal: sent while the VM runs")).code() == EIO);
    CHECK(vm_error(Error(E2BIG, "internal: batch too large")).code() == EIO);
    CHECK(vm_error(Error::unavailable(EAGAIN, "paused by its owner")).code() == EAGAIN);
    CHECK(vm_error(Error::unavailable(EBUSY, "held by another cloudvmi")).code() == EBUSY);
    CHECK(vm_error(Error::refusal(E2BIG, "more than 500000 entries")).code() == E2BIG);
    CHECK(vm_error(Error::refusal(EFBIG, "larger than the cap")).code() == EFBIG);
    CHECK(vm_error(Error::unavailable(EAGAIN, "paused").with_context("reading")).code() == EAGAIN);
    Error refused = Error::refusal(EXDEV, "x").with_context("rename");
    CHECK(refused.refused());
    CHECK(vm_error(refused).code() == EXDEV);
}
