// Libvirt nodes through the mount (issue 11): a real libvirtd runs busybox guests as TCG
// domains; /vmi/lab/ follows them as they start, stop and are paused by their owner.
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <thread>

#include "common/deadline.h"
#include "common/strings.h"
#include "tests/integration/libvirt_fixture.h"
#include "tests/integration/test_mount.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

std::set<std::string> listing(const std::string& dir) {
    std::set<std::string> names;
    auto r = run_command({"ls", "-A", dir}, 30000);
    for (auto line : split(r.out, '\n')) {
        if (!line.empty()) names.insert(std::string(line));
    }
    return names;
}

// `ls` of the node until `pred` holds (the kernel is told to forget; a second at most).
template <class P>
bool listing_becomes(const std::string& dir, P pred, int timeout_ms = 10000) {
    auto deadline = Deadline::after_ms(timeout_ms);
    while (!deadline.expired()) {
        if (pred(listing(dir))) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return pred(listing(dir));
}

bool exists(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0;
}

}  // namespace

TEST_CASE("libvirt node: domains appear, serve, go, and a suspended one stays suspended",
          "[libvirt]") {
    TestLibvirtd libvirt;
    libvirt.create("cvmi-a");
    libvirt.create("cvmi-b");
    libvirt.create("cvmi-d", false);  // no gdbstub in its XML: one is opened on demand
    TestMount m(WholeConfig{"node: here\nstate_dir: " + make_temp_dir("cloudvmi-lv-state") +
                            "\nrequest_timeout_ms: 10000\nnodes:\n  - name: lab\n    uri: " +
                            libvirt.uri() + "\n    gdb_dir: " + libvirt.socket_dir() + "\n"});
    std::string lab = m.mnt + "/lab";
    INFO("mount log:\n" << m.log());
    // Both running domains, from the first ls; no hand-listed node.
    CHECK(listing(m.mnt) == std::set<std::string>{"lab", ".cloudvmi"});
    CHECK(listing(lab) == std::set<std::string>{"cvmi-a", "cvmi-b", "cvmi-d", ".cloudvmi"});
    std::string status = read_whole_file(lab + "/.cloudvmi/status");
    CHECK(status.find("state: connected\n") != std::string::npos);
    CHECK(status.find("vms: 3\n") != std::string::npos);
    // The round trip to the daemon, measured before each listing.
    auto rtt_text = field_value(status, "rtt_ms");
    REQUIRE(!rtt_text.empty());
    double rtt = std::stod(rtt_text);
    CHECK(rtt >= 0);
    CHECK(rtt < 5000);
    CHECK(read_whole_file(m.mnt + "/.cloudvmi/nodes").find("node: lab\n") != std::string::npos);

    // Each serves its own guest, through the gdbstub its XML declares.
    REQUIRE(libvirt.wait_ready("cvmi-a", 120000));
    REQUIRE(libvirt.wait_ready("cvmi-b", 120000));
    for (const char* d : {"cvmi-a", "cvmi-b"}) {
        auto r = cat_until_ok(lab + "/" + d + "/root/etc/hostname");
        INFO(d << ": " << r.err);
        CHECK(r.status == 0);
        CHECK(trimmed(r.out) == d);
    }

    // The domain without a gdbstub gets one through the monitor for the session, in the
    // node's gdb_dir; a clean detach (the unmount, below) closes it.
    std::string on_demand = libvirt.socket_dir() + "/cloudvmi-" + libvirt.uuid("cvmi-d") + ".gdb";
    CHECK_FALSE(exists(on_demand));
    REQUIRE(libvirt.wait_ready("cvmi-d", 120000));
    auto d = cat_until_ok(lab + "/cvmi-d/root/etc/hostname");
    INFO(d.err);
    CHECK(trimmed(d.out) == "cvmi-d");
    CHECK(exists(on_demand));

    // Started during the test (a persistent domain): appears without a remount.
    libvirt.define_and_start("cvmi-c");
    CHECK(listing_becomes(lab, [](const auto& s) { return s.count("cvmi-c") == 1; }));
    // Destroyed: gone from the listing and from lookups.
    REQUIRE(libvirt.virsh({"destroy", "cvmi-b"}).status == 0);
    CHECK(listing_becomes(lab, [](const auto& s) { return s.count("cvmi-b") == 0; }));
    CHECK_FALSE(exists(lab + "/cvmi-b"));
    CHECK(exists(lab + "/cvmi-a"));

    // Suspended by its owner: reads fail at once with EAGAIN, the domain stays paused,
    // and serves again once resumed.
    REQUIRE(libvirt.virsh({"suspend", "cvmi-a"}).status == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    auto started = Clock::now();
    auto paused_read = run_command({"cat", lab + "/cvmi-a/proc/uptime"}, 30000);
    double ms = elapsed_ms(started);
    CHECK(paused_read.status != 0);
    CHECK(paused_read.err.find("Resource temporarily unavailable") != std::string::npos);
    CHECK(ms < 3000);
    CHECK(read_whole_file(lab + "/cvmi-a/.cloudvmi/status").find("paused (user)") !=
          std::string::npos);
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    CHECK(libvirt.state("cvmi-a") == "paused (user)");
    REQUIRE(libvirt.virsh({"resume", "cvmi-a"}).status == 0);
    auto again = cat_until_ok(lab + "/cvmi-a/proc/uptime", 30000);
    CHECK(again.status == 0);

    CHECK(m.unmount());
    CHECK_FALSE(exists(on_demand));  // "gdbserver none": QEMU closed and removed it
    // Detaching left every domain running.
    CHECK(libvirt.state("cvmi-a").starts_with("running"));
    CHECK(libvirt.state("cvmi-c").starts_with("running"));
    CHECK(libvirt.state("cvmi-d").starts_with("running"));
}
