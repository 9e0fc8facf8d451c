// policy/: matching, precedence, constraints, rate limits and the loader's errors.
#include "policy/policy.h"

#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

using namespace cloudvmi;
using namespace cloudvmi::policy;
using Op = Operation;
using Clock = std::chrono::steady_clock;

namespace {

// Knows a few users and groups, so that tests do not depend on the host's.
NameResolver fake_names() {
    NameResolver r;
    r.user = [](const std::string& n) -> std::optional<uid_t> {
        if (n == "root") return 0;
        if (n == "alice") return 1000;
        if (n == "bob") return 1001;
        return std::nullopt;
    };
    r.group = [](const std::string& n) -> std::optional<gid_t> {
        if (n == "vmiops") return 500;
        if (n == "incident") return 501;
        return std::nullopt;
    };
    return r;
}

std::shared_ptr<Policy> load(const std::string& yaml) {
    auto p = Policy::parse(yaml, "test.yaml", fake_names());
    if (!p) FAIL("policy does not load: " << p.error().message());
    return *p;
}

Request ask(Op op, const std::string& path, uid_t uid = 0, const std::string& vm = "web-01",
            const std::string& node = "node-1") {
    Request r;
    r.node = node;
    r.vm = vm;
    r.op = op;
    r.path = path;
    r.caller.uid = uid;
    r.caller.gid = uid;
    return r;
}

Request write(const std::string& path, const std::string& value, uint64_t offset = 0) {
    Request r = ask(Op::kWrite, path);
    r.value = value;
    r.offset = offset;
    r.size = offset + value.size();
    return r;
}

const char kMatching[] = R"(version: 1
rules:
  - id: deny-shadow
    decision: deny
    paths: [/etc/shadow, /etc/gshadow]
    ops: [read, change]
  - id: ops-etc
    decision: allow
    paths: ["/etc/**"]
    ops: [write, create, rename]
    callers: {groups: [vmiops]}
  - id: web-sysctl
    decision: allow
    vms: ["web-*"]
    nodes: ["node-[12]"]
    paths: ["/proc/sys/net/ipv4/*"]
    ops: write
  - id: tmp-files
    decision: allow
    paths: ["/tmp/scratch-??/*.log", "/var/lib/app/**/cache"]
    ops: [change]
  - id: alice-home
    decision: allow
    paths: ["/home/alice", "/home/alice/**"]
    ops: [change]
    callers: {users: [alice]}
  - id: no-var
    decision: deny
    paths: ["/var/**"]
    ops: [change]
  - id: var-late
    decision: allow
    paths: ["/var/tmp/**"]
    ops: [change]
)";

struct Row {
    Request request;
    bool allowed;
    const char* rule;
};

Request in_group(Request r, gid_t g, bool supplementary) {
    if (supplementary) {
        r.caller.groups.push_back(g);
    } else {
        r.caller.gid = g;
    }
    return r;
}

}  // namespace

TEST_CASE("policy: matching and first-match precedence", "[policy]") {
    auto p = load(kMatching);
    const Row rows[] = {
        // deny-shadow comes first: nobody writes or reads the shadow files.
        {ask(Op::kRead, "/etc/shadow"), false, "deny-shadow"},
        {ask(Op::kWrite, "/etc/shadow"), false, "deny-shadow"},
        {in_group(ask(Op::kWrite, "/etc/gshadow", 1000), 500, false), false, "deny-shadow"},
        // ops-etc: the vmiops group, primary or supplementary, any depth below /etc.
        {in_group(ask(Op::kWrite, "/etc/hosts", 1000), 500, false), true, "ops-etc"},
        {in_group(ask(Op::kWrite, "/etc/a/b/c", 1000), 500, true), true, "ops-etc"},
        {in_group(ask(Op::kCreate, "/etc/new", 1000), 500, true), true, "ops-etc"},
        {in_group(ask(Op::kUnlink, "/etc/hosts", 1000), 500, true), false, "defaults"},
        {ask(Op::kWrite, "/etc/hosts", 1000), false, "defaults"},
        {ask(Op::kWrite, "/etc/hosts", 0), false, "defaults"},  // root is not in vmiops
        {in_group(ask(Op::kWrite, "/etc", 1000), 500, true), true, "ops-etc"},  // ** = zero
        {in_group(ask(Op::kWrite, "/etcetera", 1000), 500, true), false, "defaults"},
        // web-sysctl: node and VM globs, one component.
        {ask(Op::kWrite, "/proc/sys/net/ipv4/ip_forward"), true, "web-sysctl"},
        {ask(Op::kWrite, "/proc/sys/net/ipv4/ip_forward", 0, "web-99", "node-2"), true,
         "web-sysctl"},
        {ask(Op::kWrite, "/proc/sys/net/ipv4/ip_forward", 0, "db-01"), false, "defaults"},
        {ask(Op::kWrite, "/proc/sys/net/ipv4/ip_forward", 0, "web-01", "node-3"), false,
         "defaults"},
        {ask(Op::kWrite, "/proc/sys/net/ipv4/conf/all/forwarding"), false, "defaults"},
        {ask(Op::kTruncate, "/proc/sys/net/ipv4/ip_forward"), false, "defaults"},
        // tmp-files: ? and * within a component, ** in the middle.
        {ask(Op::kCreate, "/tmp/scratch-01/a.log"), true, "tmp-files"},
        {ask(Op::kCreate, "/tmp/scratch-1/a.log"), false, "defaults"},
        {ask(Op::kCreate, "/tmp/scratch-01/a.txt"), false, "defaults"},
        {ask(Op::kCreate, "/tmp/scratch-01/sub/a.log"), false, "defaults"},
        {ask(Op::kUnlink, "/var/lib/app/cache"), true, "tmp-files"},
        {ask(Op::kUnlink, "/var/lib/app/x/y/z/cache"), true, "tmp-files"},
        {ask(Op::kUnlink, "/var/lib/app/x/cache/more"), false, "no-var"},
        // alice-home: by user name.
        {ask(Op::kMkdir, "/home/alice/src", 1000), true, "alice-home"},
        {ask(Op::kMkdir, "/home/alice", 1000), true, "alice-home"},
        {ask(Op::kMkdir, "/home/alice/src", 1001), false, "defaults"},
        {ask(Op::kMkdir, "/home/alicex", 1000), false, "defaults"},
        // A deny before an allow wins; an allow after a deny is never reached.
        {ask(Op::kWrite, "/var/tmp/x"), false, "no-var"},
        {ask(Op::kWrite, "/var/log/syslog"), false, "no-var"},
        // Defaults: reads allowed, changes denied, kill too.
        {ask(Op::kRead, "/etc/hosts", 1000), true, "defaults"},
        {ask(Op::kRead, "/proc/1/status"), true, "defaults"},
        {ask(Op::kKill, "/proc/1"), false, "defaults"},
        {ask(Op::kChmod, "/tmp/x"), false, "defaults"},
        {ask(Op::kSetxattr, "/tmp/x"), false, "defaults"},
    };
    int i = 0;
    for (const auto& row : rows) {
        INFO("row " << i++ << ": " << operation_name(row.request.op) << " " << row.request.path
                    << " uid " << row.request.caller.uid);
        Decision d = p->explain(row.request);
        CHECK(d.allowed == row.allowed);
        CHECK(d.rule == row.rule);
        CHECK(d.error == (row.allowed ? 0 : EACCES));
        CHECK(!d.reason.empty());
        CHECK(d.audit == is_change(row.request.op));
    }
}

TEST_CASE("policy: defaults read/change allow, root and deny", "[policy]") {
    auto p = load("version: 1\ndefaults: {read: root, change: root, audit_reads: true}\n");
    CHECK(p->explain(ask(Op::kRead, "/etc/hosts", 0)).allowed);
    CHECK_FALSE(p->explain(ask(Op::kRead, "/etc/hosts", 1000)).allowed);
    CHECK(p->explain(ask(Op::kWrite, "/etc/hosts", 0)).allowed);
    CHECK_FALSE(p->explain(ask(Op::kWrite, "/etc/hosts", 1000)).allowed);
    CHECK(p->explain(ask(Op::kRead, "/etc/hosts", 0)).audit);
    auto q = load("version: 1\ndefaults: {read: deny, change: allow}\n");
    CHECK_FALSE(q->explain(ask(Op::kRead, "/x", 0)).allowed);
    CHECK(q->explain(ask(Op::kUnlink, "/x", 1000)).allowed);
    CHECK_FALSE(q->explain(ask(Op::kRead, "/x", 0)).audit);
    auto b = Policy::builtin_default();
    CHECK(b->explain(ask(Op::kRead, "/etc/shadow", 1000)).allowed);
    CHECK_FALSE(b->explain(ask(Op::kWrite, "/tmp/x", 0)).allowed);
    CHECK(b->origin() == "built-in");
    CHECK(b->rule_count() == 0);
}

TEST_CASE("policy: constraints on values", "[policy]") {
    auto p = load(R"(version: 1
rules:
  - id: swappiness
    decision: allow
    paths: [/proc/sys/vm/swappiness]
    ops: [write]
    constraints: {range: [0, 100]}
  - id: forward
    decision: allow
    paths: [/proc/sys/net/ipv4/ip_forward]
    ops: [write]
    constraints: {values: ["0", "1"]}
  - id: hostname
    decision: allow
    paths: [/proc/sys/kernel/hostname]
    ops: [write]
    constraints: {regex: '^[a-z0-9-]{1,63}\n?$', max_size: 64}
  - id: small-files
    decision: allow
    paths: ["/srv/**"]
    ops: [write, truncate, symlink, chmod]
    constraints: {max_size: 10}
)");
    struct {
        Request r;
        bool allowed;
    } rows[] = {
        {write("/proc/sys/vm/swappiness", "60\n"), true},
        {write("/proc/sys/vm/swappiness", "0"), true},
        {write("/proc/sys/vm/swappiness", "100\n"), true},
        {write("/proc/sys/vm/swappiness", "101\n"), false},
        {write("/proc/sys/vm/swappiness", "-1\n"), false},
        {write("/proc/sys/vm/swappiness", "+5\n"), true},
        {write("/proc/sys/vm/swappiness", "5x\n"), false},
        {write("/proc/sys/vm/swappiness", "\n"), false},
        {write("/proc/sys/vm/swappiness", "99999999999999999999999\n"), false},
        {write("/proc/sys/vm/swappiness", "60\n\n"), false},
        {write("/proc/sys/vm/swappiness", "60\n", 3), false},  // not at offset 0
        {write("/proc/sys/net/ipv4/ip_forward", "1\n"), true},
        {write("/proc/sys/net/ipv4/ip_forward", "0"), true},
        {write("/proc/sys/net/ipv4/ip_forward", "2\n"), false},
        {write("/proc/sys/net/ipv4/ip_forward", " 1\n"), false},
        {write("/proc/sys/kernel/hostname", "web-01\n"), true},
        {write("/proc/sys/kernel/hostname", "Web 01\n"), false},
        {write("/proc/sys/kernel/hostname", std::string(70, 'a')), false},
        {write("/proc/sys/kernel/hostname", std::string(5000, 'a')), false},
        {write("/srv/a", "0123456789"), true},
        {write("/srv/a", "0123456789x"), false},
        {write("/srv/a", "xx", 9), false},  // the file would be 11 bytes
        {write("/srv/a", "xx", 8), true},
    };
    int i = 0;
    for (const auto& row : rows) {
        INFO("row " << i++ << ": " << row.r.path << " '" << row.r.value << "' at " << row.r.offset);
        Decision d = p->explain(row.r);
        CHECK(d.allowed == row.allowed);
        if (!row.allowed) {
            CHECK(d.error == EACCES);
            CHECK(d.rule != "defaults");
        }
    }
    Decision out_of_range = p->explain(write("/proc/sys/vm/swappiness", "150\n"));
    CHECK(out_of_range.reason == "value 150 out of range 0..100");
    Request trunc = ask(Op::kTruncate, "/srv/a");
    trunc.size = 11;
    CHECK_FALSE(p->explain(trunc).allowed);
    trunc.size = 0;
    CHECK(p->explain(trunc).allowed);
}

TEST_CASE("policy: kill constraints", "[policy]") {
    auto p = load(R"(version: 1
rules:
  - id: stop-stress
    decision: allow
    ops: [kill]
    constraints:
      signals: [TERM, SIGKILL, 19]
      target_names: ["stress*", "burn"]
      target_uids: [alice, 2000]
)");
    auto kill = [](int sig, const std::string& name, std::optional<uid_t> uid) {
        Request r = ask(Op::kKill, "/proc/4242");
        r.signal = sig;
        r.target_name = name;
        r.target_uid = uid;
        return r;
    };
    CHECK(p->explain(kill(15, "stress-ng", 1000)).allowed);
    CHECK(p->explain(kill(9, "burn", 2000)).allowed);
    CHECK(p->explain(kill(19, "stress", 1000)).allowed);
    CHECK_FALSE(p->explain(kill(1, "stress", 1000)).allowed);
    CHECK_FALSE(p->explain(kill(15, "sshd", 1000)).allowed);
    CHECK_FALSE(p->explain(kill(15, "stress", 0)).allowed);
    CHECK_FALSE(p->explain(kill(15, "stress", std::nullopt)).allowed);
    CHECK(p->explain(kill(15, "sshd", 1000)).rule == "stop-stress");
}

TEST_CASE("policy: rate limits slide per VM; explain does not consume", "[policy]") {
    auto p = load(R"(version: 1
rules:
  - id: limited
    decision: allow
    paths: [/proc/sys/vm/drop_caches]
    ops: [write]
    rate: {count: 2, per: 60}
)");
    Request r = write("/proc/sys/vm/drop_caches", "3\n");
    auto t0 = Clock::now();
    for (int i = 0; i < 5; ++i)
        CHECK(p->explain(r).allowed);
    CHECK(p->decide(r, t0).allowed);
    CHECK(p->decide(r, t0 + std::chrono::seconds(10)).allowed);
    Decision third = p->decide(r, t0 + std::chrono::seconds(20));
    CHECK_FALSE(third.allowed);
    CHECK(third.error == EAGAIN);
    CHECK(third.rule == "limited");
    // Another VM has its own window.
    Request other = r;
    other.vm = "web-02";
    CHECK(p->decide(other, t0 + std::chrono::seconds(20)).allowed);
    // The window slides: the first one leaves it after 60 s.
    CHECK(p->decide(r, t0 + std::chrono::seconds(61)).allowed);
    CHECK_FALSE(p->decide(r, t0 + std::chrono::seconds(62)).allowed);
    CHECK(p->decide(r, t0 + std::chrono::seconds(200)).allowed);
}

TEST_CASE("policy: loader errors name the line and column", "[policy]") {
    struct {
        const char* yaml;
        const char* where;
        const char* what;
    } rows[] = {
        {"", "test.yaml", "empty policy"},
        {"rules: []\n", "test.yaml:1:1", "needs 'version: 1'"},
        {"version: 2\n", "test.yaml:1:10", "only version 1"},
        {"version: 1\ncolour: red\n", "test.yaml:2:1", "unknown key 'colour'"},
        {"version: 1\nversion: 1\n", "test.yaml:2:1", "given twice"},
        {"version: 1\ndefaults: {read: maybe}\n", "test.yaml:2:18", "allow, root or deny"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    colour: red\n",
         "test.yaml:7:5", "unknown key 'colour' in a rule"},
        {"version: 1\nrules:\n  - id: a\n    decision: perhaps\n    ops: [write]\n    paths: "
         "[/x]\n",
         "test.yaml:4:15", "allow or deny"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write, fly]\n    paths: "
         "[/x]\n",
         "test.yaml:5:18", "unknown operation 'fly'"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: "
         "[/x/../etc]\n",
         "test.yaml:6:13", "'..'"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: "
         "[relative]\n",
         "test.yaml:6:13", "not an absolute path"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n", "test.yaml:3:5",
         "needs 'paths'"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "  - id: a\n    decision: deny\n    ops: [write]\n    paths: [/y]\n",
         "test.yaml:7:9", "used twice"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    constraints: {regex: '(unclosed'}\n",
         "test.yaml:7:26", "bad regular expression"},
        {"version: 1\nrules:\n  - id: a\n    decision: deny\n    ops: [write]\n    paths: [/x]\n"
         "    constraints: {max_size: 3}\n",
         "test.yaml:7:5", "this one denies"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    constraints: {range: [5, 1]}\n",
         "test.yaml:7:26", "MIN above MAX"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    constraints: {flavour: x}\n",
         "test.yaml:7:19", "unknown key 'flavour' in constraints"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [kill]\n"
         "    constraints: {signals: [TERM, NOPE]}\n",
         "test.yaml:6:35", "unknown signal 'NOPE'"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    callers: {users: [mallory]}\n",
         "test.yaml:7:23", "no user named 'mallory'"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: [/x]\n"
         "    rate: {count: 0, per: 10}\n",
         "test.yaml:7:19", "'count' must be"},
        {"version: 1\nrules:\n  - id: 'bad id!'\n    decision: allow\n    ops: [write]\n    "
         "paths: [/x]\n",
         "test.yaml:3:9", "rule id"},
        {"version: 1\nrules: [\n", "test.yaml:", ""},  // a YAML syntax error
        {"version: 1\nrules: {a: 1}\n", "test.yaml:2:8", "must be a list"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [write]\n    paths: []\n",
         "test.yaml:6:12", "'paths' names nothing"},
        {"version: 1\nrules:\n  - id: a\n    decision: allow\n    ops: [kill]\n"
         "    constraints: {signals: []}\n",
         "test.yaml:6:28", "'signals' names nothing"},
    };
    for (const auto& row : rows) {
        INFO(row.yaml);
        auto p = Policy::parse(row.yaml, "test.yaml", fake_names());
        REQUIRE_FALSE(p.has_value());
        CHECK(p.error().code() == EINVAL);
        CHECK_THAT(p.error().message(), Catch::Matchers::StartsWith(row.where));
        CHECK_THAT(p.error().message(), Catch::Matchers::Contains(row.what));
    }
}

TEST_CASE("policy: globs and normalised paths", "[policy]") {
    struct {
        const char* pattern;
        const char* path;
        bool match;
    } rows[] = {
        {"/", "/", true},
        {"/**", "/", true},
        {"/**", "/a/b/c", true},
        {"/a/*", "/a/b", true},
        {"/a/*", "/a/b/c", false},
        {"/a/*/c", "/a/xyz/c", true},
        {"/a/**/c", "/a/c", true},
        {"/a/**/c", "/a/b/d/c", true},
        {"/a/**/c", "/a/b/d/e", false},
        {"/a/b?", "/a/bc", true},
        {"/a/b?", "/a/b", false},
        {"/a/[bc]x", "/a/cx", true},
        {"/a/[!bc]x", "/a/cx", false},
        {"/a/[!bc]x", "/a/dx", true},
        {"/a/[a-c]", "/a/b", true},
        {"/a/[a-c]", "/a/d", false},
        {"/a/[x", "/a/[x", true},  // an unclosed class is literal
        {"/a/*.log", "/a/.log", true},
        {"/a/*.log", "/a/x.log.1", false},
        {"/proc/[0-9]*/status", "/proc/4242/status", true},
    };
    for (const auto& row : rows) {
        INFO(row.pattern << " vs " << row.path);
        CHECK(glob_match(row.pattern, row.path) == row.match);
    }
    // Adversarial input stays fast.
    std::string many(200, 'a');
    CHECK_FALSE(glob_match("/" + std::string(50, '*') + "b", "/" + many));
    std::string deep;
    for (int i = 0; i < 500; ++i)
        deep += "/x";
    CHECK_FALSE(glob_match("/**/**/**/**/**/y", deep));
    CHECK(name_match("web-*", "web-01"));
    CHECK_FALSE(name_match("web-*", "db-01"));

    CHECK(normalize_path("/a//b/./c/").value() == "/a/b/c");
    CHECK(normalize_path("/").value() == "/");
    CHECK_FALSE(normalize_path("a/b").has_value());
    CHECK_FALSE(normalize_path("/a/../b").has_value());
    CHECK_FALSE(normalize_path("").has_value());
    CHECK_FALSE(normalize_path(std::string("/a\0b", 4)).has_value());
}

TEST_CASE("policy: operation names", "[policy]") {
    for (const char* name : {"read", "write", "create", "truncate", "unlink", "mkdir", "rmdir",
                             "rename", "chmod", "chown", "symlink", "setxattr", "kill"}) {
        auto op = parse_operation(name);
        REQUIRE(op.has_value());
        CHECK(operation_name(*op) == name);
        CHECK(is_change(*op) == (std::string(name) != "read"));
    }
    CHECK_FALSE(parse_operation("change").has_value());  // a word of the file, not an op
    CHECK_FALSE(parse_operation("WRITE").has_value());
}

TEST_CASE("policy: the example policies load and decide as documented", "[policy]") {
    std::string dir = std::string(CLOUDVMI_SOURCE_DIR) + "/policy/examples/";
    auto example = [&](const char* name) {
        auto p = Policy::load_file(dir + name, fake_names());
        INFO(name << ": " << (p ? "" : p.error().message()));
        REQUIRE(p.has_value());
        return *p;
    };
    auto monitoring = example("read-only-monitoring.yaml");
    CHECK(monitoring->explain(ask(Op::kRead, "/proc/loadavg", 1000)).allowed);
    CHECK_FALSE(monitoring->explain(ask(Op::kRead, "/etc/shadow", 0)).allowed);
    CHECK_FALSE(monitoring->explain(write("/proc/sys/vm/swappiness", "10\n")).allowed);

    auto tuning = example("sysctl-tuning.yaml");
    Request swap = in_group(write("/proc/sys/vm/swappiness", "10\n"), 500, true);
    swap.caller.uid = 1000;
    CHECK(tuning->explain(swap).allowed);
    swap.value = "250\n";
    CHECK_FALSE(tuning->explain(swap).allowed);
    CHECK_FALSE(tuning->explain(write("/proc/sys/vm/swappiness", "10\n")).allowed);  // root

    auto incident = example("incident-response.yaml");
    Request kill = in_group(ask(Op::kKill, "/proc/777", 1001), 501, true);
    kill.signal = 9;
    kill.target_name = "miner";
    kill.target_uid = 1000;
    CHECK(incident->explain(kill).allowed);
    kill.target_uid = 0;
    CHECK_FALSE(incident->explain(kill).allowed);
    Request quarantine = in_group(ask(Op::kRename, "/tmp/dropper", 1001), 501, true);
    CHECK(incident->explain(quarantine).allowed);
    quarantine.path = "/root/quarantine/dropper";
    CHECK(incident->explain(quarantine).allowed);
}

TEST_CASE("policy: may_allow ignores constraints, not rules", "[policy]") {
    auto p = load(R"(version: 1
rules:
  - id: no-etc
    decision: deny
    paths: ["/etc/**"]
    ops: [change]
  - id: swappiness
    decision: allow
    paths: [/proc/sys/vm/swappiness]
    ops: [write]
    constraints: {range: [0, 100]}
)");
    CHECK(p->may_allow(write("/proc/sys/vm/swappiness", "")));
    CHECK_FALSE(p->explain(write("/proc/sys/vm/swappiness", "")).allowed);
    CHECK_FALSE(p->may_allow(write("/etc/hosts", "")));
    CHECK_FALSE(p->may_allow(write("/proc/sys/vm/dirty_ratio", "")));
    CHECK(p->may_allow(ask(Op::kRead, "/etc/hosts")));
    auto open = load("version: 1\ndefaults: {change: allow}\n");
    CHECK(open->may_allow(write("/anything", "")));
}
