// fs/config.h: the mount's YAML configuration, its defaults and every error path.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>

#include "fs/config.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

using cloudvmi::test::TempDir;

constexpr const char* kOrigin = "test.yaml";

// Parses, turning an exception that escapes Config::parse into a test failure with its text
// (parse promises errors as values).
std::optional<ErrorOr<Config>> parse_nothrow(const std::string& yaml) {
    try {
        return Config::parse(yaml, kOrigin);
    } catch (const std::exception& e) {
        FAIL_CHECK("Config::parse threw instead of returning an error: " << e.what());
    } catch (...) {
        FAIL_CHECK("Config::parse threw a non-std exception");
    }
    return std::nullopt;
}

Config parse_ok(const std::string& yaml) {
    INFO("yaml:\n" << yaml);
    auto r = parse_nothrow(yaml);
    REQUIRE(r.has_value());
    if (!r->has_value()) FAIL("unexpected error: " << r->error().message());
    return **r;
}

// The error must be EINVAL, start with "test.yaml:<line>: " and say `needle`.
void expect_error(const std::string& yaml, int line, const std::string& needle) {
    INFO("yaml:\n" << yaml);
    auto r = parse_nothrow(yaml);
    if (!r.has_value()) return;  // it threw: already reported
    if (r->has_value()) {
        FAIL_CHECK("parsed without an error; expected line " << line << ": " << needle);
        return;
    }
    const Error& e = r->error();
    INFO("message: " << e.message());
    CHECK(e.code() == EINVAL);
    CHECK_FALSE(e.from_guest());
    CHECK_THAT(e.message(), StartsWith(std::string(kOrigin) + ":" + std::to_string(line) + ": "));
    CHECK_THAT(e.message(), Contains(needle));
}

std::string vm_yaml(const std::string& name, const std::string& gdb) {
    return "vms:\n  - name: " + name + "\n    gdb: " + gdb + "\n";
}

std::string expected_host_name() {
    char buf[256] = {};
    REQUIRE(::gethostname(buf, sizeof buf - 1) == 0);
    std::string h(buf);
    return h.substr(0, h.find('.'));
}

const char* kFullConfig =
    "# a complete configuration\n"
    "node: node-1\n"
    "state_dir: /run/cloudvmi-test\n"
    "request_timeout_ms: 2500\n"
    "cache:\n"
    "  proc_attr: 0.25\n"
    "  proc_entry: 2\n"
    "  root_attr: 3.5\n"
    "  root_entry: 0\n"
    "vms:\n"
    "  - name: web-01\n"
    "    gdb: unix:/run/web-01.gdb\n"
    "    qmp: unix:/run/web-01.qmp\n"
    "  - name: db_02\n"
    "    gdb: tcp:127.0.0.1:1234\n";

}  // namespace

TEST_CASE("Config::parse reads a complete configuration", "[fs]") {
    Config c = parse_ok(kFullConfig);
    CHECK(c.node == "node-1");
    CHECK(c.state_dir == "/run/cloudvmi-test");
    CHECK(c.request_timeout_ms == 2500);
    CHECK(c.cache.proc_attr == Approx(0.25));
    CHECK(c.cache.proc_entry == Approx(2.0));
    CHECK(c.cache.root_attr == Approx(3.5));
    CHECK(c.cache.root_entry == Approx(0.0));
    REQUIRE(c.vms.size() == 2);
    CHECK(c.vms[0].name == "web-01");
    CHECK(c.vms[0].gdb == "unix:/run/web-01.gdb");
    CHECK(c.vms[0].qmp == "unix:/run/web-01.qmp");
    CHECK(c.vms[1].name == "db_02");
    CHECK(c.vms[1].gdb == "tcp:127.0.0.1:1234");
    CHECK(c.vms[1].qmp.empty());
}

TEST_CASE("Config::parse accepts the other gdb endpoint spellings", "[fs]") {
    for (const char* gdb : {"unix:/run/x.gdb", "/run/x.gdb", "tcp:host:1234", "host:1",
                            "tcp:[::1]:65535", "unix:/run/x.gdb,server=on,wait=off"}) {
        Config c = parse_ok(vm_yaml("vm", std::string("\"") + gdb + "\""));
        REQUIRE(c.vms.size() == 1);
        CHECK(c.vms[0].gdb == gdb);  // kept as written
    }
}

TEST_CASE("Config::parse fills in defaults", "[fs]") {
    std::string host = expected_host_name();
    REQUIRE(is_valid_entry_name(host));  // otherwise the default cannot be tested here

    SECTION("with only a VM list") {
        Config c = parse_ok(vm_yaml("a", "unix:/x.gdb"));
        CHECK(c.node == host);
        CHECK(c.node.find('.') == std::string::npos);
        CHECK(c.state_dir.empty());
        CHECK(c.request_timeout_ms == 5000);
        CHECK(c.cache.proc_attr == Approx(0.5));
        CHECK(c.cache.proc_entry == Approx(1.0));
        CHECK(c.cache.root_attr == Approx(1.0));
        CHECK(c.cache.root_entry == Approx(1.0));
        REQUIRE(c.vms.size() == 1);
        CHECK(c.vms[0].qmp.empty());
    }
    SECTION("with only a node: no VMs") {
        Config c = parse_ok("node: lonely\n");
        CHECK(c.node == "lonely");
        CHECK(c.vms.empty());
        CHECK(c.request_timeout_ms == 5000);
    }
    SECTION("a partial cache block keeps the other defaults") {
        Config c = parse_ok("cache:\n  root_attr: 7\n");
        CHECK(c.cache.root_attr == Approx(7.0));
        CHECK(c.cache.proc_attr == Approx(0.5));
        CHECK(c.cache.proc_entry == Approx(1.0));
        CHECK(c.cache.root_entry == Approx(1.0));
    }
    SECTION("an empty VM list") {
        Config c = parse_ok("node: n\nvms: []\n");
        CHECK(c.vms.empty());
    }
}

TEST_CASE("Config::parse bounds: request_timeout_ms and cache edges are accepted", "[fs]") {
    CHECK(parse_ok("request_timeout_ms: 100\n").request_timeout_ms == 100);
    CHECK(parse_ok("request_timeout_ms: 600000\n").request_timeout_ms == 600000);
    Config c = parse_ok(
        "cache:\n  proc_attr: 0\n  proc_entry: 3600\n  root_attr: 0.001\n  root_entry: 3600.0\n");
    CHECK(c.cache.proc_attr == 0.0);
    CHECK(c.cache.proc_entry == Approx(3600.0));
    CHECK(c.cache.root_attr == Approx(0.001));
    CHECK(c.cache.root_entry == Approx(3600.0));
}

TEST_CASE("Config::parse: YAML syntax errors name the line", "[fs]") {
    // yaml-cpp's reason follows the origin and the line.
    expect_error("node: n1\n  bad: indent\n", 2, "illegal map value");
    expect_error("node: n1\nvms:\n  - name: a\n\tgdb: b\n", 4, "illegal tab");
    // An unclosed flow sequence on line 3 is noticed at the end of the document (line 4).
    auto r = parse_nothrow("node: n1\nstate_dir: /x\nvms: [a, b\n");
    REQUIRE(r.has_value());
    REQUIRE_FALSE(r->has_value());
    INFO(r->error().message());
    CHECK(r->error().code() == EINVAL);
    bool line_ok = StartsWith(std::string(kOrigin) + ":3: ").match(r->error().message()) ||
                   StartsWith(std::string(kOrigin) + ":4: ").match(r->error().message());
    CHECK(line_ok);
    CHECK_THAT(r->error().message(), Contains("flow"));
}

TEST_CASE("Config::parse: the document must be a non-empty mapping", "[fs]") {
    expect_error("- a\n- b\n", 1, "must be a mapping");
    expect_error("just some text\n", 1, "must be a mapping");
    expect_error("\n\n42\n", 3, "must be a mapping");

    for (const char* empty : {"", "\n", "# only a comment\n", "---\n"}) {
        INFO("document: '" << empty << "'");
        auto r = parse_nothrow(empty);
        REQUIRE(r.has_value());
        REQUIRE_FALSE(r->has_value());
        CHECK(r->error().code() == EINVAL);
        CHECK_THAT(r->error().message(), StartsWith(kOrigin));
        CHECK_THAT(r->error().message(), Contains("empty"));
    }
}

TEST_CASE("Config::parse: unknown keys are refused where they are", "[fs]") {
    expect_error("node: n1\nnodez: n2\n", 2, "unknown key 'nodez'");
    expect_error("node: n1\nstate_dir: /x\nvms:\n  - name: a\n    gdb: unix:/a\n    memory: 4G\n",
                 6, "unknown key 'memory' in a VM");
    expect_error("cache:\n  proc_attr: 1\n  dentry: 2\n", 3, "unknown key 'dentry' in cache");
}

TEST_CASE("Config::parse: libvirt nodes", "[fs]") {
    auto c = Config::parse(
        "node: here\nvms:\n  - name: a\n    gdb: unix:/a\nnodes:\n  - name: lab\n"
        "    uri: qemu:///system\n  - name: far\n    uri: qemu+ssh://far/system\n",
        "t.yaml");
    REQUIRE(c);
    REQUIRE(c->nodes.size() == 2);
    CHECK(c->nodes[0].name == "lab");
    CHECK(c->nodes[0].uri == "qemu:///system");
    CHECK(c->nodes[1].uri == "qemu+ssh://far/system");
    CHECK(c->nodes[0].gdb_dir == "/var/lib/libvirt/qemu");
    auto g = Config::parse("nodes:\n  - name: lab\n    uri: test:///default\n    gdb_dir: /run/g\n",
                           "t.yaml");
    REQUIRE(g);
    CHECK(g->nodes[0].gdb_dir == "/run/g");
    expect_error("nodes:\n  - name: x\n    uri: a\n    gdb_dir: rel\n", 4, "absolute path");
    expect_error("nodes:\n  - name: x\n    uri: a\n    gdb_dir: /a,b\n", 4, "without commas");
    expect_error("nodes: lab\n", 1, "'nodes' must be a list");
    expect_error("nodes:\n  - name: lab\n", 2, "either 'uri' (libvirt) or 'ssh'");
    expect_error("nodes:\n  - name: lab\n    uri: test:///default\n    ssh: x\n", 2,
                 "either 'uri' (libvirt) or 'ssh'");
    expect_error("nodes:\n  - name: lab\n    uri: test:///default\n    ssh_options: [-v]\n", 2,
                 "need 'ssh'");
    expect_error("nodes:\n  - name: a/b\n    uri: test:///default\n", 2, "not usable");
    expect_error("nodes:\n  - name: .cloudvmi\n    uri: test:///default\n", 2, "not usable");
    expect_error("nodes:\n  - name: x\n    uri: ''\n", 3, "libvirt URI");
    expect_error("nodes:\n  - name: x\n    uri: a\n  - name: x\n    uri: b\n", 4, "used twice");
    // The hand-listed VMs are a node too.
    expect_error(
        "node: h\nvms:\n  - name: a\n    gdb: unix:/a\nnodes:\n  - name: h\n"
        "    uri: test:///default\n",
        6, "used twice");
}

TEST_CASE("Config::parse: a VM needs a name and a gdb endpoint", "[fs]") {
    expect_error("vms:\n  - gdb: unix:/x\n", 2, "needs 'name' and 'gdb'");
    expect_error("vms:\n  - name: a\n", 2, "needs 'name' and 'gdb'");
    expect_error("vms:\n  - name: a\n    gdb: unix:/a\n  - qmp: unix:/q\n    name: b\n", 4,
                 "needs 'name' and 'gdb'");
    // Present but not a single value.
    expect_error("vms:\n  - name: [a, b]\n    gdb: unix:/a\n", 2, "'name' must be a single value");
    expect_error("vms:\n  - name: a\n    gdb:\n      - unix:/a\n", 4,
                 "'gdb' must be a single value");
}

TEST_CASE("Config::parse: VM names are unique", "[fs]") {
    expect_error(
        "vms:\n"
        "  - name: a\n"
        "    gdb: unix:/a\n"
        "  - name: b\n"
        "    gdb: unix:/b\n"
        "  - name: a\n"
        "    gdb: unix:/c\n",
        6, "'a' is used twice");
}

TEST_CASE("Config::parse: node and VM names must be usable as file names", "[fs]") {
    const std::string long_name(129, 'x');
    for (const std::string& bad : {std::string(""), std::string("."), std::string(".."),
                                   std::string(".hidden"), std::string("a/b"), std::string("a b"),
                                   std::string(" lead"), std::string("tab\there"), long_name}) {
        INFO("name '" << bad << "'");
        expect_error("state_dir: /x\nnode: \"" + bad + "\"\n", 2, "is not usable as a file name");
        expect_error("node: n1\nvms:\n  - gdb: unix:/a\n    name: \"" + bad + "\"\n", 4,
                     "is not usable as a file name");
    }
    // The longest usable name.
    const std::string max_name(128, 'y');
    CHECK(parse_ok("node: " + max_name + "\n").node == max_name);
    CHECK(parse_ok(vm_yaml(max_name, "unix:/a")).vms.at(0).name == max_name);
    // A node that is not a single value.
    expect_error("node: [a]\n", 1, "'node' must be a single value");
    expect_error("node: ~\nstate_dir: /x\n", 1, "'node' must be a single value");
}

TEST_CASE("Config::parse: an empty value is reported on the line of its key", "[fs]") {
    // yaml-cpp marks an empty (null) value at the next token, which may be lines further
    // down or past the end of the file; the error must still name the key's own line.
    expect_error("node:\n", 1, "'node' must be a single value");
    expect_error("state_dir: /x\nnode:\n\n\nrequest_timeout_ms: 1000\n", 2,
                 "'node' must be a single value");
    expect_error("cache:\nnode: n\n", 1, "'cache' must be a mapping");
    expect_error("vms:\nnode: n\n", 1, "'vms' must be a list");
    expect_error("vms:\n  - name:\n    gdb: unix:/a\n", 2, "'name' must be a single value");
}

TEST_CASE("Config::parse: a key given twice is an error", "[fs]") {
    // YAML mapping keys are unique; yaml-cpp does not enforce it and the first one would
    // silently win (a second 'vms' block would be dropped without a word).
    expect_error("node: n1\nnode: n2\n", 2, "node");
    expect_error(
        "vms:\n  - name: a\n    gdb: unix:/a\nnode: n\nvms:\n  - name: b\n    gdb: unix:/b\n", 5,
        "vms");
    expect_error("vms:\n  - name: a\n    gdb: unix:/a\n    gdb: unix:/b\n", 4, "gdb");
}

TEST_CASE("Config::parse: bad gdb endpoints", "[fs]") {
    expect_error(vm_yaml("a", "nonsense"), 3, "neither unix:PATH nor tcp:HOST:PORT");
    expect_error(vm_yaml("a", "tcp:host:99999"), 3, "bad port");
    expect_error(vm_yaml("a", "tcp:host:0"), 3, "bad port");
    expect_error(vm_yaml("a", "tcp:host:http"), 3, "bad port");
    expect_error(vm_yaml("a", "\"unix:\""), 3, "empty unix socket path");
    expect_error(vm_yaml("a", "\"\""), 3, "neither unix:PATH nor tcp:HOST:PORT");
    // The second VM is the bad one: its own line is named.
    expect_error("vms:\n  - name: a\n    gdb: unix:/a\n  - name: b\n    gdb: nowhere\n", 5,
                 "neither");
}

TEST_CASE("Config::parse: request_timeout_ms range and type", "[fs]") {
    expect_error("node: n\nrequest_timeout_ms: 99\n", 2, "request_timeout_ms must be 100..600000");
    expect_error("node: n\nrequest_timeout_ms: 0\n", 2, "request_timeout_ms must be 100..600000");
    expect_error("node: n\nrequest_timeout_ms: -5000\n", 2,
                 "request_timeout_ms must be 100..600000");
    expect_error("node: n\nrequest_timeout_ms: 600001\n", 2,
                 "request_timeout_ms must be 100..600000");
    expect_error("request_timeout_ms: fast\n", 1,
                 "'request_timeout_ms' has a value of the wrong type");
    expect_error("request_timeout_ms: 1.5\n", 1, "wrong type");
    expect_error("request_timeout_ms: [1000]\n", 1, "'request_timeout_ms' must be a single value");
}

TEST_CASE("Config::parse: cache values", "[fs]") {
    expect_error("cache:\n  proc_attr: -0.5\n", 2, "proc_attr must be 0..3600");
    expect_error("cache:\n  proc_entry: 3601\n", 2, "proc_entry must be 0..3600");
    expect_error("cache:\n  root_attr: 1\n  root_entry: 3600.5\n", 3, "root_entry must be 0..3600");
    expect_error("cache:\n  root_attr: -1\n", 2, "root_attr must be 0..3600");
    expect_error("cache:\n  proc_attr: slow\n", 2, "'proc_attr' has a value of the wrong type");
    expect_error("cache:\n  proc_attr: .inf\n", 2, "proc_attr must be 0..3600");
    expect_error("cache: 5\n", 1, "'cache' must be a mapping");
    expect_error("cache:\n  - proc_attr\n", 2, "'cache' must be a mapping");
}

TEST_CASE("Config::parse: a NaN cache lifetime is refused", "[fs]") {
    // YAML's .nan converts to a double NaN, which compares false with both bounds.
    expect_error("cache:\n  proc_attr: .nan\n", 2, "proc_attr must be 0..3600");
    expect_error("cache:\n  root_entry: .NaN\n", 2, "root_entry must be 0..3600");
}

TEST_CASE("Config::parse: 'vms' must be a list of mappings", "[fs]") {
    expect_error("node: n\nvms: web-01\n", 2, "'vms' must be a list");
    expect_error("node: n\nvms:\n  name: a\n  gdb: unix:/a\n", 3, "'vms' must be a list");
    expect_error("vms:\n  - name: a\n    gdb: unix:/a\n  - web-02\n", 4,
                 "each VM must be a mapping");
    expect_error("vms:\n  - [a, b]\n", 2, "each VM must be a mapping");
}

TEST_CASE("Config::parse: a non-scalar key is an error and not an exception", "[fs]") {
    // A complex mapping key ("? [a, b]") at the top level, in cache and in a VM.
    expect_error("node: n\n? [a, b]\n: 1\n", 2, "unknown key");
    expect_error("cache:\n  ? {x: 1}\n  : 2\n", 2, "unknown key");
    expect_error("vms:\n  - name: a\n    gdb: unix:/a\n    ? [q]\n    : 1\n", 4, "unknown key");
}

TEST_CASE("Config::load_file", "[fs]") {
    TempDir dir{"cloudvmi-fs-config"};

    SECTION("a missing file names the path and keeps the errno") {
        std::string path = dir.file("absent/cloudvmi.yaml");
        auto r = Config::load_file(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOENT);
        CHECK_THAT(r.error().message(), Contains(path));
    }
    SECTION("a real file is parsed") {
        std::string path = dir.file("cloudvmi.yaml");
        test::write_file(path, kFullConfig);
        auto r = Config::load_file(path);
        REQUIRE(r.has_value());
        CHECK(r->node == "node-1");
        CHECK(r->request_timeout_ms == 2500);
        REQUIRE(r->vms.size() == 2);
        CHECK(r->vms[1].gdb == "tcp:127.0.0.1:1234");
    }
    SECTION("errors in a file name the file as origin, with the line") {
        std::string path = dir.file("bad.yaml");
        test::write_file(path, "node: n1\nrequest_timeout_ms: 50\n");
        auto r = Config::load_file(path);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EINVAL);
        CHECK_THAT(r.error().message(), StartsWith(path + ":2: "));
        CHECK_THAT(r.error().message(), Contains("request_timeout_ms"));
    }
}

TEST_CASE("is_valid_entry_name", "[fs]") {
    for (const std::string& good : {std::string("a"), std::string("web-01"), std::string("db_02"),
                                    std::string("a.b"), std::string("a..b"), std::string("A9"),
                                    std::string("trailing."), std::string(128, 'x')}) {
        INFO("'" << good << "'");
        CHECK(is_valid_entry_name(good));
    }
    for (const std::string& bad :
         {std::string(""), std::string("."), std::string(".."), std::string(".a"),
          std::string("a/b"), std::string("/"), std::string("a b"), std::string("a\tb"),
          std::string("a\nb"), std::string("a:b"), std::string("caf\xc3\xa9"),
          std::string("a\0b", 3), std::string(129, 'x')}) {
        INFO("'" << bad << "'");
        CHECK_FALSE(is_valid_entry_name(bad));
    }
}

TEST_CASE("Config::parse: who may use the mount, and consuming reads", "[fs]") {
    auto defaults = parse_ok(vm_yaml("a", "unix:/a.gdb"));
    CHECK(defaults.operators_group.empty());
    CHECK_FALSE(defaults.operators_gid);  // resolved by the mount command, not the parser
    CHECK_FALSE(defaults.allow_consuming_reads);
    auto set = parse_ok("operators_group: vmiops\nallow_consuming_reads: true\n" +
                        vm_yaml("a", "unix:/a.gdb"));
    CHECK(set.operators_group == "vmiops");
    CHECK(set.allow_consuming_reads);
    CHECK(parse_ok("operators_group: 4242\n" + vm_yaml("a", "unix:/a.gdb")).operators_group ==
          "4242");
    expect_error("operators_group: 'a b'\n" + vm_yaml("a", "unix:/a.gdb"), 1,
                 "operators_group must be a group name or number");
    expect_error("allow_consuming_reads: sometimes\n" + vm_yaml("a", "unix:/a.gdb"), 1,
                 "wrong type");
}

TEST_CASE("Config::parse: nodes on other hosts, reached over ssh", "[fs]") {
    auto c = Config::parse(
        "nodes:\n  - name: far\n    ssh: root@far.example\n"
        "    ssh_options: [-p, \"2222\", -i, /etc/cloudvmi/key]\n"
        "  - name: near\n    ssh: near\n    remote_command: /opt/cloudvmi serve --stdio\n",
        "t.yaml");
    REQUIRE(c);
    REQUIRE(c->nodes.size() == 2);
    CHECK(c->nodes[0].remote());
    CHECK(c->nodes[0].ssh == "root@far.example");
    CHECK(c->nodes[0].ssh_options ==
          std::vector<std::string>{"-p", "2222", "-i", "/etc/cloudvmi/key"});
    CHECK(c->nodes[0].remote_command == "cloudvmi serve --stdio");  // the default
    CHECK(c->nodes[1].remote_command == "/opt/cloudvmi serve --stdio");
    // ssh would read a leading '-' as an option of its own.
    expect_error("nodes:\n  - name: far\n    ssh: -oProxyCommand=x\n", 3, "must be a host");
    expect_error("nodes:\n  - name: far\n    ssh: 'a b'\n", 3, "must be a host");
    expect_error("nodes:\n  - name: far\n    ssh: h\n    ssh_options: -v\n", 4,
                 "list of arguments");
    expect_error("nodes:\n  - name: far\n    ssh: h\n    ssh_options: [[a]]\n", 4,
                 "must be a string");
    expect_error("nodes:\n  - name: far\n    ssh: h\n    remote_command: ''\n", 4,
                 "must not be empty");
    expect_error("nodes:\n  - name: far\n    ssh: h\n    gdb_dir: /x\n", 4,
                 "remote host's business");
}
