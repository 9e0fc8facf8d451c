// What cloudvmi reads from a libvirt domain XML (nodes/domain_xml.h).
#include "nodes/domain_xml.h"

#include <catch2/catch.hpp>

#include "nodes/domain_gdbserver.h"

using namespace cloudvmi;
using namespace cloudvmi::nodes;

namespace {

std::string domain_with(const std::string& commandline) {
    return "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
           "<name>web-01</name><uuid>6f1d2e8a-33c1-4d5e-9a7b-0c1d2e3f4a5b</uuid>"
           "<memory unit='KiB'>262144</memory><os><type>hvm</type></os>" +
           commandline + "</domain>";
}

std::string args(std::initializer_list<const char*> values) {
    std::string s = "<qemu:commandline>";
    for (const char* v : values)
        s += std::string("<qemu:arg value='") + v + "'/>";
    return s + "</qemu:commandline>";
}

}  // namespace

TEST_CASE("domain XML: name, uuid and the sockets on the QEMU command line", "[nodes]") {
    struct Row {
        std::string commandline, gdb, qmp;
    };
    auto row = GENERATE(
        Row{"", "", ""},
        Row{args({"-gdb", "unix:/run/vmi/web-01.gdb,server=on,wait=off"}),
            "unix:/run/vmi/web-01.gdb", ""},
        Row{args({"-gdb=unix:/run/a.gdb,server"}), "unix:/run/a.gdb", ""},
        Row{args({"--gdb", "tcp::1234"}), "tcp:localhost:1234", ""},
        Row{args({"-gdb", "tcp:10.0.0.5:4000,server=on"}), "tcp:10.0.0.5:4000", ""},
        Row{args({"-gdb", "tcp:0.0.0.0:4000"}), "tcp:localhost:4000", ""},
        Row{args({"-s"}), "tcp:localhost:1234", ""},
        Row{args({"-gdb", "unix:/a", "-gdb", "unix:/b"}), "unix:/b", ""},        // the last wins
        Row{args({"-gdb", "pty"}), "", ""},                                      // not a socket
        Row{args({"-gdb", "tcp::99999"}), "", ""}, Row{args({"-gdb"}), "", ""},  // no value
        Row{args({"-qmp", "unix:/run/vmi/web-01.qmp,server=on,wait=off", "-s"}),
            "tcp:localhost:1234", "unix:/run/vmi/web-01.qmp"},
        // Args outside the qemu namespace are not QEMU's.
        Row{"<commandline><arg value='-gdb'/><arg value='unix:/x'/></commandline>", "", ""});
    INFO(row.commandline);
    auto d = parse_domain_xml(domain_with(row.commandline));
    REQUIRE(d);
    CHECK(d->name == "web-01");
    CHECK(d->uuid == "6f1d2e8a-33c1-4d5e-9a7b-0c1d2e3f4a5b");
    CHECK(d->gdb == row.gdb);
    CHECK(d->qmp == row.qmp);
}

TEST_CASE("domain XML: what is not a domain is an error with the reason", "[nodes]") {
    auto bad = GENERATE(as<std::string>{}, "", "<domain>", "<network><name>x</name></network>",
                        "<domain><uuid>1</uuid></domain>", "not xml at all",
                        "<?xml version='1.0'?><!DOCTYPE d SYSTEM 'http://example.invalid/d.dtd'>"
                        "<domain><name>&ext;</name></domain>");
    INFO(bad);
    auto d = parse_domain_xml(bad);
    REQUIRE_FALSE(d);
    CHECK(d.error().code() == EINVAL);
    CHECK(d.error().message().starts_with("domain XML"));
}

TEST_CASE("domain XML: entities are not a way to blow up memory", "[nodes]") {
    std::string laughs = "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY a 'aaaaaaaaaa'>";
    char prev = 'a';
    for (char c = 'b'; c <= 'k'; ++c) {
        laughs += std::string("<!ENTITY ") + c + " '";
        for (int i = 0; i < 10; ++i)
            laughs += std::string("&") + prev + ";";
        laughs += "'>";
        prev = c;
    }
    laughs += "]><domain><name>&k;</name></domain>";
    auto d = parse_domain_xml(laughs);
    REQUIRE_FALSE(d);  // never 10^11 bytes: a DTD is refused
    CHECK(d.error().code() == EINVAL);
    // An entity that would smuggle a '/' into the name.
    auto slash = parse_domain_xml(
        "<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x 'a/b'>]><domain><name>&x;</name></domain>");
    REQUIRE_FALSE(slash);
    CHECK(slash.error().message().find("document type") != std::string::npos);
}

TEST_CASE("domain XML: chardev addresses as endpoints", "[nodes]") {
    CHECK(endpoint_from_chardev("unix:/p,server=on,wait=off") == "unix:/p");
    CHECK(endpoint_from_chardev("unix:") == "");
    CHECK(endpoint_from_chardev("tcp:host:5") == "tcp:host:5");
    CHECK(endpoint_from_chardev("tcp:[::1]:5") == "tcp:[::1]:5");
    CHECK(endpoint_from_chardev("tcp:host") == "");
    CHECK(endpoint_from_chardev("tcp:host:") == "");
    CHECK(endpoint_from_chardev("stdio") == "");
    CHECK(endpoint_from_chardev("") == "");
}

TEST_CASE("gdbserver through the monitor: QEMU's reply decides, not libvirt's status", "[nodes]") {
    CHECK(check_gdbserver_reply("unix:/s,server=on,wait=off",
                                "Waiting for gdb connection on device 'unix:/s,server=on'\r\n"));
    CHECK(check_gdbserver_reply("none", "Disabled gdbserver\r\n"));
    auto refused = check_gdbserver_reply("unix:/nope/s,server=on",
                                         "Could not open gdbserver on device 'unix:/nope/s'\r\n");
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code() == EIO);
    CHECK(refused.error().message().find("Could not open gdbserver") != std::string::npos);
    CHECK_FALSE(check_gdbserver_reply("unix:/s", ""));
    CHECK_FALSE(check_gdbserver_reply("none", "Waiting for gdb connection on device 'none'"));
}
