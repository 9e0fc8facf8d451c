// The mount's changes under a policy, without FUSE and with VMs that cannot be reached:
// a denied change never reaches the session (EACCES, one audit line), an allowed one
// does (and fails there with ENOTCONN, its intent and outcome on record).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "common/digest.h"
#include "common/strings.h"
#include "fs/audit_log.h"
#include "fs/change_gate.h"
#include "fs/filesystem.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using Json = nlohmann::json;

namespace {

using cloudvmi::test::TempDir;

const Caller kRoot{};
const Caller kAlice{1000, 1000, {}, 0};

const char kPolicy[] = R"(version: 1
rules:
  - id: no-shadow-file
    decision: deny
    paths: [/etc/shadow]
    ops: [read]
    audit: true
  - id: swappiness
    decision: allow
    paths: [/proc/sys/vm/swappiness]
    ops: [write]
    constraints: {range: [0, 100]}
  - id: scratch
    decision: allow
    paths: [/tmp/x, /tmp/x/**]
    ops: [change]
  - id: top
    decision: allow
    paths: [/cvmi-top]
    ops: [mkdir]
  - id: stop-sleepers
    decision: allow
    ops: [kill]
    constraints: {signals: [STOP], target_names: [sleep]}
)";

struct GovernedTree {
    TempDir dir{"cloudvmi-governed"};
    Config config;
    std::unique_ptr<Filesystem> fs;
    std::string policy_path = dir.path() + "/policy.yaml";
    std::string audit_path = dir.path() + "/audit/audit.log";

    explicit GovernedTree(const std::string& policy = kPolicy) {
        std::ofstream(policy_path) << policy;
        auto c = Config::parse("node: n1\nstate_dir: " + dir.state_dir() +
                                   "\nrequest_timeout_ms: 500\npolicy: " + policy_path +
                                   "\naudit:\n  file: " + audit_path +
                                   "\n  syslog: false\nvms:\n  - name: vm-a\n"
                                   "    gdb: unix:/nonexistent/a.gdb\n",
                               "governed.yaml");
        if (!c) throw std::runtime_error(c.error().describe());
        config = *c;
        fs = std::make_unique<Filesystem>(config, Filesystem::session_options(config, ""));
        auto g = load_governance(config);
        if (!g) throw std::runtime_error(g.error().describe());
        fs->set_governance(std::move(*g));
    }

    std::shared_ptr<Node> walk(const std::vector<std::string>& path) {
        auto n = fs->inodes().get(InodeTable::kRootIno);
        for (const auto& name : path) {
            auto next = n->lookup(name);
            INFO("lookup of " << name);
            REQUIRE(next.has_value());
            n = *next;
        }
        return n;
    }

    std::vector<Json> audit() {
        std::vector<Json> out;
        std::ifstream in(audit_path);
        for (std::string line; std::getline(in, line);) {
            auto j = Json::parse(line, nullptr, false);
            REQUIRE_FALSE(j.is_discarded());
            out.push_back(j);
        }
        return out;
    }

    uint64_t batches() { return fs->find_vm("vm-a")->session().status().batches; }
    SessionState state() { return fs->find_vm("vm-a")->session().state(); }
};

template <class T>
int err_of(const ErrorOr<T>& r) {
    return r ? 0 : r.error().code();
}

}  // namespace

TEST_CASE("governed tree: a denied change never reaches the guest, one audit line",
          "[fs][policy]") {
    GovernedTree t;
    auto tmp = t.walk({"n1", "vm-a", "root"});
    CHECK(err_of(tmp->mkdir("elsewhere", 0755, kRoot)) == EACCES);
    CHECK(err_of(tmp->unlink("etc", kRoot)) == EACCES);
    std::unique_ptr<FileHandle> h;
    CHECK(err_of(tmp->create("new", 0644, O_WRONLY | O_CREAT, h, kRoot)) == EACCES);
    CHECK(err_of(tmp->symlink("/etc/passwd", "l", kRoot)) == EACCES);
    CHECK(t.state() == SessionState::kDetached);
    CHECK(t.batches() == 0);

    auto lines = t.audit();
    REQUIRE(lines.size() == 4);
    CHECK(lines[0]["phase"] == "denied");
    CHECK(lines[0]["op"] == "mkdir");
    CHECK(lines[0]["path"] == "/elsewhere");
    CHECK(lines[0]["rule"] == "defaults");
    CHECK(lines[0]["vm"] == "vm-a");
    CHECK(lines[0]["node"] == "n1");
    CHECK(lines[1]["op"] == "unlink");
    CHECK(lines[2]["op"] == "create");
    CHECK(lines[3]["op"] == "symlink");
    for (const auto& l : lines) {
        CHECK(l["decision"] == "deny");
        CHECK(l["id"].get<std::string>().size() == 16);
        CHECK_FALSE(l.contains("result"));
    }
}

TEST_CASE("governed tree: an allowed change reaches the session, intent then outcome",
          "[fs][policy]") {
    GovernedTree t;
    auto root = t.walk({"n1", "vm-a", "root"});
    CHECK(err_of(root->mkdir("cvmi-top", 0755, kRoot)) == ENOTCONN);  // no VM behind it
    auto lines = t.audit();
    REQUIRE(lines.size() == 2);
    CHECK(lines[0]["phase"] == "intent");
    CHECK(lines[0]["op"] == "mkdir");
    CHECK(lines[0]["path"] == "/cvmi-top");
    CHECK(lines[0]["rule"] == "top");
    CHECK(lines[1]["phase"] == "outcome");
    CHECK(lines[1]["id"] == lines[0]["id"]);
    CHECK(lines[1]["result"] == "error");
    CHECK(lines[1]["errno"] == ENOTCONN);
}

TEST_CASE("governed tree: ctl/kill checks its order before asking the guest", "[fs][policy]") {
    GovernedTree t;
    auto kill = t.walk({"n1", "vm-a", "ctl", "kill"});
    CHECK(err_of(kill->open(O_RDONLY, kRoot)) == EACCES);
    auto handle = kill->open(O_WRONLY, kRoot);
    REQUIRE(handle.has_value());
    auto write = [&](const std::string& order) {
        return err_of((*handle)->write(
            std::span(reinterpret_cast<const uint8_t*>(order.data()), order.size()), 0, kRoot));
    };
    for (const char* bad : {"", "\n", "x STOP", "42 NOSUCHSIGNAL", "42 STOP extra", "0", "-5",
                            "42 65", "99999999999"}) {
        INFO(bad);
        CHECK(write(bad) == EINVAL);
    }
    CHECK(t.batches() == 0);
    // A good order asks the guest for the target's name first: unreachable here.
    CHECK(write("42 STOP\n") == ENOTCONN);
    CHECK(t.audit().empty());
}

TEST_CASE("governed tree: reads denied by a rule are refused and audited", "[fs][policy]") {
    GovernedTree t;
    ChangeGate& gate = t.fs->find_vm("vm-a")->gate();
    ChangeScope scope{"n1", "vm-a"};
    CHECK(err_of(gate.check_read(scope, kRoot, "/etc/shadow")) == EACCES);
    CHECK(gate.check_read(scope, kRoot, "/etc/passwd").has_value());
    auto lines = t.audit();
    REQUIRE(lines.size() == 1);  // only the rule that asks for it is audited
    CHECK(lines[0]["phase"] == "read");
    CHECK(lines[0]["decision"] == "deny");
    CHECK(lines[0]["rule"] == "no-shadow-file");
}

TEST_CASE("governed tree: the gate decides, records and runs in that order", "[fs][policy]") {
    GovernedTree t;
    ChangeGate& gate = t.fs->find_vm("vm-a")->gate();
    ChangeScope scope{"n1", "vm-a"};
    std::string value = "50\n";
    ChangeAsk ask;
    ask.op = policy::Operation::kWrite;
    ask.path = "/proc/sys/vm/swappiness";
    ask.value = value;
    ask.size = value.size();
    ask.data = std::span(reinterpret_cast<const uint8_t*>(value.data()), value.size());
    int ran = 0;
    auto ok = gate.apply(scope, kRoot, ask, [&]() -> ErrorOr<int> {
        ++ran;
        // The intent is on disk before the change runs.
        REQUIRE(t.audit().size() == 1);
        return 7;
    });
    REQUIRE(ok.has_value());
    CHECK(*ok == 7);
    CHECK(ran == 1);

    ask.value = "150\n";
    auto denied = gate.apply(scope, kRoot, ask, [&]() -> ErrorOr<int> {
        ++ran;
        return 0;
    });
    CHECK(err_of(denied) == EACCES);
    CHECK(ran == 1);

    ask.value = "10\n";
    auto failed = gate.apply(scope, kAlice, ask, [&]() -> ErrorOr<int> {
        ++ran;
        return guest_error(EROFS, "read-only");
    });
    CHECK(err_of(failed) == EROFS);

    auto lines = t.audit();
    REQUIRE(lines.size() == 5);
    CHECK(lines[0]["phase"] == "intent");
    CHECK(lines[1]["phase"] == "outcome");
    CHECK(lines[1]["id"] == lines[0]["id"]);
    CHECK(lines[1]["result"] == "ok");
    CHECK(lines[0]["sha256"] == sha256_hex(ask.data));  // of "50\n": same bytes
    CHECK(lines[2]["phase"] == "denied");
    CHECK(lines[2]["reason"].get<std::string>().find("100") != std::string::npos);
    CHECK(lines[3]["phase"] == "intent");
    CHECK(lines[3]["uid"] == 1000);
    CHECK(lines[4]["result"] == "error");
    CHECK(lines[4]["errno"] == EROFS);
}

TEST_CASE("governed tree: changes naming the shadow (/proc/self) are refused", "[fs][policy]") {
    GovernedTree t("version: 1\ndefaults: {change: allow}\n");
    auto proc = t.walk({"n1", "vm-a", "proc"});
    CHECK(err_of(proc->mkdir("self", 0755, kRoot)) == EACCES);
    CHECK(err_of(proc->unlink("thread-self", kRoot)) == EACCES);
    CHECK(t.batches() == 0);
}

TEST_CASE("policy store: a broken reload keeps the policy in force", "[fs][policy]") {
    TempDir dir("cloudvmi-store");
    std::string path = dir.path() + "/policy.yaml";
    std::ofstream(path) << kPolicy;
    PolicyStore store(path);
    REQUIRE(store.load().has_value());
    auto first = store.current();
    CHECK(first->rule_count() == 5);
    std::ofstream(path) << "version: 1\nrules: [{id: x, decision: maybe, ops: [write]}]\n";
    CHECK_FALSE(store.reload());
    CHECK(store.current() == first);
    CHECK(store.status_text().find("FAILED") != std::string::npos);
    std::ofstream(path) << "version: 1\n";
    CHECK(store.reload());
    CHECK(store.current()->rule_count() == 0);
    CHECK(store.status_text().find("last reload: ok") != std::string::npos);
    // The first load refuses a broken file outright.
    std::ofstream(path) << "version: 2\n";
    PolicyStore broken(path);
    CHECK_FALSE(broken.load().has_value());
}

TEST_CASE("audit log: rotated by size, private, never through a symlink", "[fs][policy]") {
    TempDir dir("cloudvmi-audit");
    AuditOptions o;
    o.path = dir.path() + "/log/audit.log";
    o.max_bytes = 4096;
    o.keep = 2;
    o.syslog = false;
    auto log = AuditLog::open(o);
    REQUIRE(log.has_value());
    std::string line(1000, 'x');
    for (int i = 0; i < 12; ++i)
        REQUIRE((*log)->append(line, i % 2 == 0).has_value());
    struct stat st {};
    REQUIRE(::stat(o.path.c_str(), &st) == 0);
    CHECK(st.st_size <= 4096);
    CHECK((st.st_mode & 077) == 0);
    CHECK(::access((o.path + ".1").c_str(), F_OK) == 0);
    CHECK(::access((o.path + ".2").c_str(), F_OK) == 0);
    CHECK(::access((o.path + ".3").c_str(), F_OK) != 0);
    CHECK((*log)->lines_written() == 12);

    AuditOptions linked = o;
    linked.path = dir.path() + "/log/linked.log";
    REQUIRE(::symlink("/etc/hostname", linked.path.c_str()) == 0);
    auto refused = AuditLog::open(linked);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code() == EPERM);
}

TEST_CASE("sha256_hex: known digests", "[fs][policy]") {
    std::string abc = "abc";
    CHECK(sha256_hex(std::span(reinterpret_cast<const uint8_t*>(abc.data()), abc.size())) ==
          "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha256_hex(std::span<const uint8_t>{}) ==
          "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST_CASE("config: policy and audit keys", "[fs][policy]") {
    auto c = Config::parse(
        "policy: /etc/p.yaml\naudit:\n  file: /var/a.log\n  max_bytes: 8192\n  keep: 3\n"
        "  syslog: false\n",
        "c.yaml");
    REQUIRE(c.has_value());
    CHECK(c->policy == "/etc/p.yaml");
    CHECK(c->audit.file == "/var/a.log");
    CHECK(c->audit.max_bytes == 8192);
    CHECK(c->audit.keep == 3);
    CHECK_FALSE(c->audit.syslog);
    auto defaults = Config::parse("node: x\n", "d.yaml");
    REQUIRE(defaults.has_value());
    CHECK_FALSE(defaults->policy.has_value());
    CHECK(defaults->audit.file == "/var/log/cloudvmi/audit.log");
    for (const char* bad :
         {"policy: relative.yaml\n", "audit: {file: rel.log}\n", "audit: {max_bytes: 10}\n",
          "audit: {keep: -1}\n", "audit: {colour: red}\n", "audit: 3\n"}) {
        INFO(bad);
        auto r = Config::parse(bad, "bad.yaml");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().message().rfind("bad.yaml:1", 0) == 0);
    }
}

TEST_CASE("governed tree: a file no write can reach is not opened for writing", "[fs][policy]") {
    GovernedTree t;
    ChangeGate& gate = t.fs->find_vm("vm-a")->gate();
    ChangeScope scope{"n1", "vm-a"};
    // An allow rule with constraints: opened (each write is decided with its value).
    CHECK(gate.check_writable(scope, kRoot, "/proc/sys/vm/swappiness").has_value());
    CHECK(t.audit().empty());
    CHECK(err_of(gate.check_writable(scope, kRoot, "/proc/sys/vm/dirty_ratio")) == EACCES);
    auto lines = t.audit();
    REQUIRE(lines.size() == 1);
    CHECK(lines[0]["phase"] == "denied");
    CHECK(lines[0]["op"] == "write");
    CHECK(lines[0]["rule"] == "defaults");
}
