// The management applications (apps/) against two real guests under one real mount: the
// shared Debian 12 guest (systemd, sshd: the reference values come from inside it) as
// lab/deb-01 and a busybox guest as lab/web-01. Run with CLOUDVMI_TEST_IMAGE=debian
// (ctest -R apps_two_guests).
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/deadline.h"
#include "common/strings.h"
#include "tests/integration/guest_fixture.h"
#include "tests/integration/test_mount.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

// Signals only to `sleep` processes; sysctl and file changes only where the desired state
// used by the tests needs them; the module copied in through the mount.
const char kPolicy[] = R"(version: 1
rules:
  - id: signal-sleepers
    decision: allow
    ops: [kill]
    constraints: {target_names: [sleep], signals: [TERM, KILL]}
  - id: desired-sysctls
    decision: allow
    paths: [/proc/sys/vm/swappiness]
    ops: [write]
  - id: desired-files
    decision: allow
    paths: [/etc/cloudvmi-motd, /tmp/cloudvmi_hide.ko]
    ops: [write, truncate, create, chmod]
)";

class AppsLab {
  public:
    static AppsLab& shared() {
        static std::unique_ptr<AppsLab> lab;
        if (!lab) lab.reset(new AppsLab());
        return *lab;
    }

    TestGuest& deb() { return deb_; }
    TestGuest& web() { return web_; }
    const std::string& mnt() const { return mount_->mnt; }
    std::string vm(const char* name) const { return mount_->mnt + "/lab/" + name; }
    std::string audit() const { return read_whole_file(mount_->dir + "/audit/audit.log"); }
    const std::string& dir() const { return mount_->dir; }

    // cloudvmi SUBCOMMAND ARGS... --mount MNT
    CommandResult app(std::vector<std::string> args, int timeout_ms = 300000) const {
        args.insert(args.begin(), cloudvmi_binary());
        args.push_back("--mount");
        args.push_back(mnt());
        return run_command(args, timeout_ms);
    }

  private:
    AppsLab() : deb_(debian_guest()), web_(TestGuest::start(busybox_config())) {
        std::ofstream(policy_path_) << kPolicy;
        mount_ = std::make_unique<TestMount>(WholeConfig{
            "node: lab\nstate_dir: " + make_temp_dir("cloudvmi-apps-state") +
            "\npolicy: " + policy_path_ + "\nvms:\n  - name: deb-01\n    gdb: " + deb_.gdb() +
            "\n    qmp: " + deb_.vmi_qmp() + "\n  - name: web-01\n    gdb: " + web_.gdb() +
            "\n    qmp: " + web_.vmi_qmp() + "\n"});
        // Both attached before the first application runs.
        for (const char* name : {"deb-01", "web-01"}) {
            auto r = cat_until_ok(vm(name) + "/proc/uptime");
            INFO(r.err << mount_->log());
            REQUIRE(r.status == 0);
        }
    }

    static TestGuest& debian_guest() {
        auto& guest = TestGuest::shared();
        INFO("run with CLOUDVMI_TEST_IMAGE=debian (ctest -R apps_two_guests)");
        REQUIRE(guest.config().image == "debian");
        return guest;
    }

    static GuestConfig busybox_config() {
        GuestConfig c = GuestConfig::from_environment();
        c.image = "busybox";
        c.release = "bookworm";
        c.name = "appsweb";
        c.hostname = "web-01";
        return c;
    }

    TestGuest& deb_;
    TestGuest web_;
    std::string policy_path_ = make_temp_dir("cloudvmi-apps") + "/policy.yaml";
    std::unique_ptr<TestMount> mount_;
};

std::string must_ssh(const TestGuest& guest, const std::string& command) {
    auto r = guest.ssh(command, 120000);
    INFO("ssh " << command << ": status " << r.status << "\n" << r.out << r.err);
    REQUIRE(r.status == 0);
    return trimmed(r.out);
}

uint64_t number(const std::string& text) {
    auto v = parse_u64(trimmed(text));
    INFO("'" << text << "'");
    REQUIRE(v.has_value());
    return *v;
}

nlohmann::json parse_json(const CommandResult& r) {
    INFO("stdout:\n" << r.out << "\nstderr:\n" << r.err);
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    return j;
}

const nlohmann::json& vm_entry(const nlohmann::json& list, const std::string& name) {
    for (const auto& e : list) {
        if (e.value("vm", "") == name) return e;
    }
    FAIL("no entry for " << name << " in " << list.dump());
    throw std::logic_error("unreachable");
}

// A detached `sleep SECONDS` in the Debian guest; its pid.
long start_sleeper(const TestGuest& guest, int seconds) {
    return static_cast<long>(number(must_ssh(
        guest, "nohup setsid sleep " + std::to_string(seconds) + " >/dev/null 2>&1 & echo $!")));
}

bool alive_in_guest(const TestGuest& guest, long pid) {
    return guest.ssh("kill -0 " + std::to_string(pid), 60000).status == 0;
}

bool gone_within(const TestGuest& guest, long pid, int ms) {
    auto deadline = Deadline::after_ms(ms);
    while (alive_in_guest(guest, pid)) {
        if (deadline.expired()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
    return true;
}

}  // namespace

TEST_CASE("Apps: top's values are what the guests report; ps lists a guest's processes", "[apps]") {
    auto& lab = AppsLab::shared();
    long sleeper = start_sleeper(lab.deb(), 600);
    auto r = lab.app({"top", "--once", "--json", "-i", "0.5", "-q"});
    INFO(r.err);  // which VM could not be read, and why
    REQUIRE(r.status == 0);
    auto report = parse_json(r);
    REQUIRE(report.size() == 2);
    const auto& deb = vm_entry(report, "deb-01");
    const auto& web = vm_entry(report, "web-01");
    CHECK(deb["node"] == "lab");
    CHECK(deb["kernel"] == must_ssh(lab.deb(), "uname -r"));
    CHECK(deb["hostname"] == must_ssh(lab.deb(), "hostname"));
    CHECK(deb["memory"]["total_bytes"].get<uint64_t>() ==
          1024 * number(must_ssh(lab.deb(), "awk '/^MemTotal:/ {print $2}' /proc/meminfo")));
    auto guest_uptime = std::stod(must_ssh(lab.deb(), "cut -d' ' -f1 /proc/uptime"));
    CHECK(std::abs(deb["uptime_seconds"].get<double>() - guest_uptime) < 60);
    auto guest_procs = number(must_ssh(lab.deb(), "ls /proc | grep -c '^[0-9]'"));
    CHECK(std::abs(deb["processes"].get<double>() - static_cast<double>(guest_procs)) < 15);
    CHECK(deb["top_cpu"].size() == 3);
    CHECK(deb["top_memory"].size() == 3);
    CHECK(web["kernel"] == lab.web().kernel_version());
    CHECK(web["hostname"] == "web-01");
    CHECK(web["processes"].get<int>() > 5);

    // The text report, as cron would mail it: a header and one line per VM.
    auto text = lab.app({"top", "--once", "-i", "0.2", "--top", "1", "--sort", "name"});
    REQUIRE(text.status == 0);
    CHECK(text.out.find("NODE/VM") != std::string::npos);
    auto deb_line = text.out.find("lab/deb-01"), web_line = text.out.find("lab/web-01");
    CHECK(deb_line < web_line);
    CHECK(web_line != std::string::npos);
    CHECK(text.out.find("\033[") == std::string::npos);  // no terminal codes in a pipe

    auto ps = lab.app({"ps", "deb-01", "--json", "-q"});
    REQUIRE(ps.status == 0);
    bool init = false, found = false;
    for (const auto& p : parse_json(ps)) {
        init |= p["pid"] == 1 && p["comm"] == "systemd";
        found |= p["pid"] == sleeper && p["cmdline"] == "sleep 600" && p["user"] == "root";
    }
    CHECK(init);
    CHECK(found);
    auto ps_text = lab.app({"ps", "lab/deb-01"});
    REQUIRE(ps_text.status == 0);
    CHECK(std::regex_search(
        ps_text.out, std::regex("\\nroot +" + std::to_string(sleeper) + " .* sleep 600\\n")));
    auto none = lab.app({"ps", "no-such-vm"});
    CHECK(none.status == 3);
    CHECK(none.err.find("no VM matches") != std::string::npos);
    must_ssh(lab.deb(), "kill " + std::to_string(sleeper));
}

TEST_CASE("Apps: find locates a workload by name and hash and signals it when allowed", "[apps]") {
    auto& lab = AppsLab::shared();
    long sleeper = start_sleeper(lab.deb(), 8888);
    std::string hash = must_ssh(lab.deb(), "sha256sum /usr/bin/sleep").substr(0, 64);
    auto by_name = lab.app({"find", "--name", "^sleep$", "--cmdline", "8888", "--hash", "--json"});
    REQUIRE(by_name.status == 0);
    auto matches = parse_json(by_name);
    REQUIRE(matches.size() == 1);
    CHECK(matches[0]["vm"] == "deb-01");
    CHECK(matches[0]["pid"] == sleeper);
    CHECK(matches[0]["exe_sha256"] == hash);
    auto by_hash = lab.app({"find", "--exe-sha256", hash, "--json"});
    REQUIRE(by_hash.status == 0);
    bool hashed = false;
    for (const auto& m : parse_json(by_hash))
        hashed |= m["pid"] == sleeper;
    CHECK(hashed);
    CHECK(lab.app({"find", "--name", "^no-such-process$"}).status == 1);

    // Without --yes a signal is a dry run.
    auto dry = lab.app({"find", "--cmdline", "^sleep 8888$", "--signal", "TERM"});
    CHECK(dry.status == 0);
    CHECK(dry.out.find("dry run") != std::string::npos);
    CHECK(alive_in_guest(lab.deb(), sleeper));
    auto sent = lab.app({"find", "--cmdline", "^sleep 8888$", "--signal", "TERM", "--yes"});
    INFO(sent.out << sent.err);
    CHECK(sent.status == 0);
    CHECK(sent.out.find("signal TERM: sent") != std::string::npos);
    CHECK(gone_within(lab.deb(), sleeper, 20000));
    CHECK(lab.audit().find("\"op\":\"kill\",\"path\":\"/proc/" + std::to_string(sleeper)) !=
          std::string::npos);

    // The policy allows signals to sleep only: another process is refused (exit 4), alive.
    long tail = static_cast<long>(
        number(must_ssh(lab.deb(), "nohup setsid tail -f /dev/null >/dev/null 2>&1 & echo $!")));
    auto refused = lab.app({"find", "--cmdline", "^tail -f /dev/null$", "--signal", "KILL", "--yes",
                            "--vm", "deb-01"});
    INFO(refused.out << refused.err);
    CHECK(refused.status == 4);
    CHECK(refused.out.find("Permission denied") != std::string::npos);
    CHECK(alive_in_guest(lab.deb(), tail));
    must_ssh(lab.deb(), "kill " + std::to_string(tail));
}

TEST_CASE("Apps: desired state finds drift, applies it, then reports none", "[apps]") {
    auto& lab = AppsLab::shared();
    must_ssh(lab.deb(), "sysctl -q vm.swappiness=60 && rm -f /etc/cloudvmi-motd");
    std::string file = lab.dir() + "/state.yaml";
    std::ofstream(file) << "version: 1\nvms:\n"
                           "  - match: '*'\n    sysctl: {vm.swappiness: 17}\n"
                           "  - match: lab/deb-*\n    files:\n"
                           "      /etc/cloudvmi-motd: {content: \"managed\\n\", mode: '0640'}\n";
    auto diff = lab.app({"state", "diff", file});
    INFO(diff.out << diff.err);
    CHECK(diff.status == 1);
    CHECK(diff.out.find("lab/deb-01               drift    sysctl vm.swappiness: 60 -> 17") !=
          std::string::npos);
    CHECK(diff.out.find("lab/web-01               drift    sysctl vm.swappiness") !=
          std::string::npos);
    CHECK(diff.out.find("missing  file   /etc/cloudvmi-motd") != std::string::npos);

    auto apply = lab.app({"state", "apply", file, "--json"});
    REQUIRE(apply.status == 0);
    auto changes = parse_json(apply);
    CHECK(changes.size() == 3);
    for (const auto& c : changes)
        CHECK(c["status"] == "applied");
    CHECK(must_ssh(lab.deb(), "sysctl -n vm.swappiness") == "17");
    CHECK(must_ssh(lab.deb(), "stat -c %a /etc/cloudvmi-motd; cat /etc/cloudvmi-motd") ==
          "640\nmanaged");
    CHECK(lab.audit().find("\"path\":\"/proc/sys/vm/swappiness\"") != std::string::npos);

    // Idempotent and quiet once in sync.
    auto again = lab.app({"state", "diff", file});
    CHECK(again.status == 0);
    CHECK(again.out.empty());
    auto reapply = lab.app({"state", "apply", file});
    CHECK(reapply.status == 0);
    CHECK(reapply.out.empty());

    // A change the policy does not allow: exit 4, nothing written.
    std::ofstream(file + ".denied") << "version: 1\nvms:\n  - match: deb-01\n"
                                       "    sysctl: {vm.overcommit_ratio: 51}\n";
    auto before = must_ssh(lab.deb(), "sysctl -n vm.overcommit_ratio");
    auto denied = lab.app({"state", "apply", file + ".denied"});
    CHECK(denied.status == 4);
    CHECK(denied.out.find("Permission denied") != std::string::npos);
    CHECK(must_ssh(lab.deb(), "sysctl -n vm.overcommit_ratio") == before);
    CHECK(lab.app({"state", "diff", lab.dir() + "/no-such.yaml"}).status == 2);
}

TEST_CASE(
    "Apps: the security monitor is silent on clean guests, flags a kmod-hidden pid, "
    "the module and a changed /etc/passwd",
    "[apps]") {
    auto& lab = AppsLab::shared();
    std::string base = lab.dir() + "/baselines";
    auto baseline = lab.app({"secmon", "baseline", "--baseline-dir", base});
    INFO(baseline.err);
    REQUIRE(baseline.status == 0);
    auto clean = lab.app({"secmon", "check", "--baseline-dir", base, "--json"});
    INFO(clean.out << clean.err);
    CHECK(clean.status == 0);
    CHECK(clean.out.empty());

    // The test rootkit, built from Debian's headers for the guest's kernel, copied in through
    // the mount, hides a sleeper from /proc listings.
    auto built = run_command(
        {source_dir() + "/scripts/build-kmod.sh", "--kernel-version", lab.deb().kernel_version()},
        900000);
    INFO(built.err);
    REQUIRE(built.status == 0);
    std::string out = trimmed(built.out);
    std::string ko = out.substr(out.rfind('\n') + 1);  // the last line names the module
    REQUIRE(cloudvmi::test::read_whole_file(ko).size() > 1000);
    auto copy = run_command({"cp", ko, lab.vm("deb-01") + "/root/tmp/cloudvmi_hide.ko"});
    INFO(copy.err);
    REQUIRE(copy.status == 0);
    long hidden = start_sleeper(lab.deb(), 9999);
    // Once cp has closed it, the guest has no fd on the copy: loading (or running) what was
    // written through the mount must not fail with ETXTBSY.
    std::string shadow =
        field_value(read_whole_file(lab.vm("deb-01") + "/.cloudvmi/status"), "shadow_pid");
    REQUIRE_FALSE(shadow.empty());
    auto holders = [&] {
        return must_ssh(lab.deb(),
                        "ls -l /proc/" + shadow + "/fd | grep -c cloudvmi_hide.ko || true");
    };
    auto closed_by = Deadline::after_ms(3000);
    while (holders() != "0" && !closed_by.expired()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(holders() == "0");
    must_ssh(lab.deb(), "insmod /tmp/cloudvmi_hide.ko hide_pid=" + std::to_string(hidden) +
                            " && cp /etc/passwd /root/passwd.orig && "
                            "echo 'intruder:x:0:0::/root:/bin/sh' >> /etc/passwd");
    CHECK(must_ssh(lab.deb(), "ls /proc | grep -cx " + std::to_string(hidden) + " || true") == "0");

    auto check = lab.app({"secmon", "check", "--baseline-dir", base, "--json"});
    must_ssh(lab.deb(), "rmmod cloudvmi_hide; cp /root/passwd.orig /etc/passwd; kill " +
                            std::to_string(hidden));
    INFO(check.out << check.err);
    CHECK(check.status == 1);
    std::multiset<std::string> seen;
    std::string alerts = trimmed(check.out);
    for (auto line : split(alerts, '\n')) {
        auto alert = nlohmann::json::parse(line, nullptr, false);
        REQUIRE(alert.is_object());
        CHECK(alert["vm"] == "deb-01");  // the busybox guest stays clean
        seen.insert(alert["check"].get<std::string>());
        if (alert["check"] == "hidden-process") CHECK(alert["data"]["pid"] == hidden);
        if (alert["check"] == "file-changed") CHECK(alert["data"]["path"] == "/etc/passwd");
        if (alert["check"] == "module-added") CHECK(alert["data"]["module"] == "cloudvmi_hide");
    }
    CHECK(seen == std::multiset<std::string>{"hidden-process", "module-added", "file-changed"});
    // Restored: silent again.
    auto after = lab.app({"secmon", "check", "--baseline-dir", base});
    INFO(after.out << after.err);
    CHECK(after.status == 0);
}

TEST_CASE("Apps: the exporter is scraped over HTTP by curl; textfile output", "[apps]") {
    auto& lab = AppsLab::shared();
    INFO("needs curl (apt-get install curl)");
    REQUIRE_FALSE(find_in_path("curl").empty());
    std::string log = lab.dir() + "/exporter.log";
    pid_t exporter = spawn_process(
        {cloudvmi_binary(), "exporter", "--mount", lab.mnt(), "--listen", "127.0.0.1:0"}, log);
    std::smatch port;
    auto deadline = Deadline::after_ms(20000);
    std::string said;
    while (!std::regex_search(said = read_whole_file(log), port,
                              std::regex("http://127\\.0\\.0\\.1:([0-9]+)/metrics")) &&
           !deadline.expired()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    INFO(said);
    REQUIRE_FALSE(port.empty());
    auto scrape = run_command({"curl", "-sS", "--fail", "--max-time", "120",
                               "http://127.0.0.1:" + port[1].str() + "/metrics"});
    ::kill(exporter, SIGTERM);
    int status = 0;
    ::waitpid(exporter, &status, 0);
    CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
    INFO(scrape.err);
    REQUIRE(scrape.status == 0);
    // Every sample line parses as the text exposition format has it.
    std::regex sample("[a-zA-Z_:][a-zA-Z0-9_:]*(\\{[^}]*\\})? [-+0-9.eE]+|[a-zA-Z_:]+.* (Nan|NaN)");
    std::map<std::string, std::string> values;
    for (auto line : split(scrape.out, '\n')) {
        if (line.empty() || line.starts_with("#")) continue;
        INFO(line);
        CHECK(std::regex_match(std::string(line), sample));
        auto space = line.rfind(' ');
        values[std::string(line.substr(0, space))] = std::string(line.substr(space + 1));
    }
    CHECK(values["cloudvmi_vm_up{node=\"lab\",vm=\"deb-01\"}"] == "1");
    CHECK(values["cloudvmi_vm_up{node=\"lab\",vm=\"web-01\"}"] == "1");
    CHECK(values["cloudvmi_vm_memory_total_bytes{node=\"lab\",vm=\"deb-01\"}"] ==
          std::to_string(
              1024 * number(must_ssh(lab.deb(), "awk '/^MemTotal:/ {print $2}' /proc/meminfo"))));
    CHECK(std::stod(values["cloudvmi_requests_total{node=\"lab\",vm=\"web-01\"}"]) > 0);
    CHECK(values["cloudvmi_node_up{node=\"lab\",kind=\"listed\"}"] == "1");
    CHECK(scrape.out.find("# TYPE cloudvmi_requests_total counter") != std::string::npos);

    std::string prom = lab.dir() + "/cloudvmi.prom";
    auto textfile = lab.app({"exporter", "--textfile", prom});
    REQUIRE(textfile.status == 0);
    auto file = read_whole_file(prom);
    CHECK(file.find("cloudvmi_vm_up{node=\"lab\",vm=\"web-01\"} 1") != std::string::npos);
    CHECK(file.find("cloudvmi_exporter_collect_seconds") != std::string::npos);
}

TEST_CASE("Apps: check_cloudvmi's exit codes and output follow the plugin guidelines", "[apps]") {
    auto& lab = AppsLab::shared();
    must_ssh(lab.deb(), "sysctl -q vm.swappiness=17");
    std::string plugin =
        cloudvmi_binary().substr(0, cloudvmi_binary().rfind('/')) + "/check_cloudvmi";
    std::string file = lab.vm("deb-01") + "/proc/sys/vm/swappiness";
    auto check = [&](std::vector<std::string> args) {
        args.insert(args.begin(), plugin);
        return run_command(args, 60000);
    };
    auto ok = check({"-f", file, "-l", "swappiness", "-w", "20", "-c", "30"});
    CHECK(ok.status == 0);
    CHECK(ok.out == "CLOUDVMI OK - swappiness = 17 | swappiness=17;20;30\n");
    auto warning = check({"-f", file, "-w", "10", "-c", "30"});
    CHECK(warning.status == 1);
    CHECK(warning.out.starts_with("CLOUDVMI WARNING - "));
    auto critical = check({"-f", file, "-w", "10", "-c", "15"});
    CHECK(critical.status == 2);
    CHECK(critical.out.starts_with("CLOUDVMI CRITICAL - "));
    CHECK(check({"-f", file, "-w", "@10:20"}).status == 1);
    auto unknown = check({"-f", lab.vm("deb-01") + "/proc/no-such-file", "-c", "1"});
    CHECK(unknown.status == 3);
    CHECK(unknown.out.starts_with("CLOUDVMI UNKNOWN - "));
    CHECK(check({"-f", file, "-c", "30:10"}).status == 3);
    CHECK(check({"--no-such-option"}).status == 3);
    auto load = check({"-f", lab.vm("web-01") + "/proc/loadavg", "-F", "1", "-c", "100"});
    CHECK(load.status == 0);
    auto stats =
        check({"-f", lab.vm("web-01") + "/.cloudvmi/stats.json", "-j", "requests", "-c", "1:"});
    CHECK(stats.status == 0);
}
