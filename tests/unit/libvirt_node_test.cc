// The node inventory (nodes/libvirt_node.h) against libvirt's test:/// driver: a real
// libvirt connection, events and all, served inside this process. test:///default is one
// state shared by every connection of the process, so a second connection of the test
// starts and stops domains that the node sees through its own.
#include "nodes/libvirt_node.h"

#include <libvirt/libvirt.h>

#include <catch2/catch.hpp>

using namespace cloudvmi;
using namespace cloudvmi::nodes;

namespace {

struct TestConnection {
    virConnectPtr conn = virConnectOpen("test:///default");
    ~TestConnection() {
        if (conn != nullptr) virConnectClose(conn);
    }
};

std::string domain_xml(const std::string& name) {
    return "<domain type='test'><name>" + name +
           "</name><memory unit='KiB'>65536</memory><os><type>hvm</type></os></domain>";
}

bool has(const std::vector<DomainInfo>& ds, const std::string& name) {
    for (const auto& d : ds) {
        if (d.description.name == name) return true;
    }
    return false;
}

// Waits until the node's listing satisfies `pred` (bounded).
template <class P>
bool eventually(LibvirtNode& node, P pred) {
    auto deadline = Deadline::after_ms(5000);
    while (!deadline.expired()) {
        uint64_t g = node.generation();
        if (pred(node.domains())) return true;
        node.wait_for_generation(g, deadline);
    }
    return pred(node.domains());
}

}  // namespace

TEST_CASE("libvirt node: lists the running domains and follows starts and stops", "[nodes]") {
    TestConnection admin;
    REQUIRE(admin.conn != nullptr);
    std::vector<std::vector<std::string>> heard;
    std::mutex heard_mutex;
    auto node = LibvirtNode::start(NodeOptions{.name = "lab", .uri = "test:///default"},
                                   [&](const std::vector<DomainInfo>& ds) {
                                       std::vector<std::string> names;
                                       for (const auto& d : ds)
                                           names.push_back(d.description.name);
                                       std::lock_guard lock(heard_mutex);
                                       heard.push_back(names);
                                   });
    // The driver's own domain, "test", runs from the start.
    REQUIRE(eventually(*node, [](const auto& ds) { return has(ds, "test"); }));
    auto status = node->status();
    CHECK(status.state == NodeState::kConnected);
    CHECK(status.connects == 1);
    CHECK(status.error.empty());
    for (const auto& d : node->domains()) {
        if (d.description.name != "test") continue;
        CHECK(d.state == "running");
        CHECK(d.id > 0);
        CHECK_FALSE(d.description.uuid.empty());
    }

    // Started elsewhere: appears, through a lifecycle event (no resync for 30 s).
    virDomainPtr started = virDomainCreateXML(admin.conn, domain_xml("cvmi-new").c_str(), 0);
    REQUIRE(started != nullptr);
    CHECK(eventually(*node, [](const auto& ds) { return has(ds, "cvmi-new"); }));
    // Paused: still listed, with libvirt's reason.
    REQUIRE(virDomainSuspend(started) == 0);
    CHECK(eventually(*node, [](const auto& ds) {
        for (const auto& d : ds) {
            if (d.description.name == "cvmi-new") return d.state == "paused";
        }
        return false;
    }));
    for (const auto& d : node->domains()) {
        if (d.description.name == "cvmi-new") CHECK(d.state_reason == "user");
    }
    // Destroyed: gone.
    REQUIRE(virDomainDestroy(started) == 0);
    virDomainFree(started);
    CHECK(eventually(*node, [](const auto& ds) { return !has(ds, "cvmi-new"); }));
    CHECK(has(node->domains(), "test"));
    std::lock_guard lock(heard_mutex);
    CHECK(heard.size() >= 3);  // the first listing, the start, the pause, the destroy
}

TEST_CASE("libvirt node: an unreachable URI is away with the reason and retried", "[nodes]") {
    auto node = LibvirtNode::start(NodeOptions{.name = "gone",
                                               .uri = "test:///nonexistent/cvmi-none.xml",
                                               .retry_min = Millis(20),
                                               .retry_max = Millis(40)});
    auto deadline = Deadline::after_ms(5000);
    uint64_t g = 0;
    while (node->generation() < 3 && !deadline.expired()) {
        g = node->generation();
        node->wait_for_generation(g, deadline);
    }
    auto status = node->status();
    CHECK(status.state == NodeState::kAway);
    CHECK(status.error.find("connecting to test:///nonexistent/cvmi-none.xml") !=
          std::string::npos);
    CHECK(node->generation() >= 3);  // retried, with back-off
    CHECK(status.connects == 0);
    CHECK(node->domains().empty());
    CHECK(status.describe().starts_with("away, 0 domains ("));
}

TEST_CASE("libvirt URIs: which reach another host", "[nodes]") {
    CHECK_FALSE(is_remote_uri("qemu:///system"));
    CHECK_FALSE(is_remote_uri("qemu+unix:///system?socket=/run/x"));
    CHECK_FALSE(is_remote_uri("test:///default"));
    CHECK_FALSE(is_remote_uri("lab"));  // an alias before libvirt resolves it
    CHECK(is_remote_uri("qemu+ssh://root@far/system"));
    CHECK(is_remote_uri("qemu+tls://far.example:16514/system"));
    CHECK(is_remote_uri("qemu://far/system"));
}
