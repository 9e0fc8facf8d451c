// The applications' parsers of guest files, the desired-state format, threshold ranges,
// value selection and baselines (apps/), on real kernel output and on hostile text.
#include <catch2/catch.hpp>
#include <string>

#include "apps/desired_state.h"
#include "apps/nagios_range.h"
#include "apps/procfs.h"
#include "apps/security_checks.h"
#include "apps/snapshot_json.h"
#include "apps/value_select.h"

using namespace cloudvmi;
using namespace cloudvmi::apps;

TEST_CASE("proc/loadavg, meminfo and uptime parse; malformed text is refused", "[apps]") {
    auto l = parse_loadavg("0.52 0.40 0.30 2/93 4121\n");
    REQUIRE(l);
    CHECK(l->load1 == Approx(0.52));
    CHECK(l->load15 == Approx(0.30));
    CHECK(l->running == 2);
    CHECK(l->total == 93);
    CHECK(l->last_pid == 4121);
    CHECK_FALSE(parse_loadavg(""));
    CHECK_FALSE(parse_loadavg("0.52 0.40 0.30 2-93 4121"));
    CHECK_FALSE(parse_loadavg("0.52 0.40 0.30 2/93 4121 extra"));
    CHECK_FALSE(parse_loadavg("nan? 0.40 0.30 2/93 4121"));

    auto m = parse_meminfo(
        "MemTotal:        1000 kB\nMemFree:  200 kB\nMemAvailable: 600 kB\n"
        "SwapTotal: 0 kB\nSwapFree: 0 kB\n");
    REQUIRE(m);
    CHECK(m->total_kib == 1000);
    CHECK(m->available_kib == 600);
    auto old = parse_meminfo("MemTotal: 1000 kB\nMemFree: 200 kB\n");
    REQUIRE(old);
    CHECK(old->available_kib == 200);  // before 3.14: MemFree stands in
    CHECK_FALSE(parse_meminfo("MemFree: 200 kB\n"));
    CHECK_FALSE(parse_meminfo("MemTotal: -5 kB\n"));

    CHECK(parse_uptime("1234.56 2000.00\n") == Approx(1234.56));
    CHECK_FALSE(parse_uptime("-1 2"));
    CHECK_FALSE(parse_uptime("inf 2"));
    CHECK_FALSE(parse_uptime("nan 2"));
    CHECK_FALSE(parse_loadavg("inf 0.40 0.30 2/93 4121"));
    CHECK_FALSE(parse_uptime("\n"));
}

TEST_CASE("proc/PID/stat: the name runs to the last ')', whatever it holds", "[apps]") {
    std::string tail =
        " S 1 261 261 0 -1 4194560 95 0 0 0 7 21 0 0 20 0 1 0 6142 2981888 219 184467 1 1 0 0 0";
    auto s = parse_pid_stat("261 (sleep)" + tail);
    REQUIRE(s);
    CHECK(s->pid == 261);
    CHECK(s->comm == "sleep");
    CHECK(s->state == 'S');
    CHECK(s->ppid == 1);
    CHECK(s->utime == 7);
    CHECK(s->stime == 21);
    CHECK(s->threads == 1);
    CHECK(s->start_time == 6142);
    CHECK(s->vsize == 2981888);
    CHECK(s->rss_pages == 219);
    CHECK_FALSE(s->kernel_thread());  // flags 4194560: no PF_KTHREAD
    auto kthread = parse_pid_stat(
        "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0 184467 0 0 0");
    REQUIRE(kthread);
    CHECK(kthread->kernel_thread());
    // A process may name itself to look like more fields.
    auto tricky = parse_pid_stat("77 (x) R 1 2 (y)" + tail);
    REQUIRE(tricky);
    CHECK(tricky->comm == "x) R 1 2 (y");
    CHECK(tricky->ppid == 1);
    CHECK_FALSE(parse_pid_stat("77 (x"));
    CHECK_FALSE(parse_pid_stat("77 x) S 1"));
    CHECK_FALSE(parse_pid_stat("abc (x)" + tail));
    CHECK_FALSE(parse_pid_stat("77 (x) SS 1 2"));
}

TEST_CASE("proc/PID/status, cmdline, pid names and passwd", "[apps]") {
    auto s = parse_pid_status(
        "Name:\tmy worker\nUmask:\t0022\nTgid:\t88\nPid:\t90\n"
        "Uid:\t1000\t1000\t1000\t1000\n");
    REQUIRE(s);
    CHECK(s->name == "my worker");
    CHECK(s->tgid == 88);
    CHECK(s->uid == 1000);
    CHECK_FALSE(parse_pid_status("Name:\tx\nTgid:\t88\n"));  // no Uid
    CHECK(cmdline_text(std::string("sleep\0"
                                   "100\0",
                                   10)) == "sleep 100");
    CHECK(cmdline_text(std::string("a\nb\x1b", 4)) == "a\\x0ab\\x1b");
    // Terminal-safe: C1 controls (raw or as UTF-8), DEL, backslash and stray bytes escaped;
    // other UTF-8 kept.
    CHECK(display_text("caf\xc3\xa9 \xe2\x82\xac") == "caf\xc3\xa9 \xe2\x82\xac");
    CHECK(display_text("\xc2\x9b"
                       "31m") == "\\xc2\\x9b31m");
    CHECK(display_text("\x9b\x7f\\") == "\\x9b\\x7f\\x5c");
    CHECK(display_text("\xc0\xaf\xed\xa0\x80") ==
          "\\xc0\\xaf\\xed\\xa0\\x80");  // overlong, surrogate
    CHECK(display_text("abcdef", 3) == "abc...");
    CHECK(parse_pid_name("123") == 123L);
    CHECK_FALSE(parse_pid_name("0123"));
    CHECK_FALSE(parse_pid_name("self"));
    CHECK_FALSE(parse_pid_name("99999999999"));
    auto users = parse_passwd(
        "root:x:0:0:root:/root:/bin/bash\nbroken\nbob:x:1000:1000::/:/bin/sh\n"
        "toor:x:0:0::/:/bin/sh\n");
    CHECK(user_name(users, 0) == "root");
    CHECK(user_name(users, 1000) == "bob");
    CHECK(user_name(users, 4242) == "4242");
}

TEST_CASE("proc/net tables give listening sockets only", "[apps]") {
    std::string tcp =
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        "
        "0 15830 1 0000000000000000 100 0 0 10 0\n"
        "   1: 0100007F:0277 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        "
        "0 15999 1 0000000000000000 100 0 0 10 0\n"
        "   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:00096C2B 00000000     0        "
        "0 16001 4 0000000000000000 20 4 27 10 -1\n"
        "   3: garbage\n";
    auto l = parse_net_listeners(tcp, "tcp");
    REQUIRE(l.size() == 2);
    CHECK(l[0].key() == "tcp 0.0.0.0:22");
    CHECK(l[1].key() == "tcp 127.0.0.1:631");
    CHECK(l[1].uid == 101);
    std::string tcp6 =
        "  sl  local_address                         remote_address                        st\n"
        "   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 15832 1\n"
        "   1: 00000000000000000000000001000000:0019 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 15833 1\n";
    auto l6 = parse_net_listeners(tcp6, "tcp6");
    REQUIRE(l6.size() == 2);
    CHECK(l6[0].key() == "tcp6 :::22");
    CHECK(l6[1].key() == "tcp6 ::1:25");
    CHECK(parse_modules("ext4 1 2 - Live 0x0\nfuse 3 0 - Live 0x0\n") ==
          std::vector<std::string>{"ext4", "fuse"});
}

TEST_CASE("Desired state: parsed strictly, later entries win, paths stay in the VM", "[apps]") {
    auto state = parse_desired_state(R"(version: 1
vms:
  - match: "*"
    sysctl:
      vm.swappiness: 10
      kernel.hostname: base
  - match: [web-*, "lab/db-1"]
    sysctl:
      vm.swappiness: 1
    files:
      /etc/motd:
        content: "hello\n"
        mode: "0600"
)");
    REQUIRE(state);
    VmRef web{"lab", "web-3", "/vmi/lab/web-3"}, other{"lab", "db-2", "/vmi/lab/db-2"};
    auto s = state->for_vm(web);
    REQUIRE(s.size() == 3);
    CHECK(s[0].key == "vm.swappiness");
    CHECK(s[0].value == "1");
    CHECK(s[0].tree_path() == "proc/sys/vm/swappiness");
    CHECK(s[2].tree_path() == "root/etc/motd");
    CHECK(s[2].mode == 0600);
    CHECK(state->for_vm(other).size() == 2);
    CHECK(state->for_vm(VmRef{"lab", "db-1", ""}).size() == 3);
    auto dotted = parse_desired_state(
        "version: 1\nvms:\n  - match: x\n    sysctl: {net/ipv4/conf/eth0.100/forwarding: 1}\n");
    REQUIRE(dotted);
    CHECK(dotted->groups[0].settings[0].tree_path() ==
          "proc/sys/net/ipv4/conf/eth0.100/forwarding");

    const char* bad[] = {
        "version: 2\nvms: []\n",
        "version: 1\nvms:\n  - match: x\n    sysctls: {a: 1}\n",
        "version: 1\nvms:\n  - match: x\n    sysctl: {../../etc/passwd: 1}\n",
        "version: 1\nvms:\n  - match: x\n    sysctl: {kernel/../x: 1}\n",
        "version: 1\nvms:\n  - match: x\n    files: {etc/motd: {content: a}}\n",
        "version: 1\nvms:\n  - match: x\n    files: {/etc/../shadow: {content: a}}\n",
        "version: 1\nvms:\n  - match: x\n    files: {/etc/motd: {mode: '0644'}}\n",
        "version: 1\nvms:\n  - match: x\n    files: {/etc/motd: {content: a, mode: 'rw'}}\n",
        "version: 1\nvms:\n  - sysctl: {a.b: 1}\n",
        "version: 1\nvms: [\n",
        "[1, 2]",
        "version: 1\nvms:\n  - match: []\n    sysctl: {a.b: 1}\n",
        "version: 1\nvms:\n  - match: ''\n    sysctl: {a.b: 1}\n",
        "version: 1\nvms:\n  - match: x\n    sysctl: {a.b: }\n",
        "version: 1\nvms:\n  - match: x\n    sysctl: {a.b: [1]}\n",
        "version: 1\nvms:\n  - match: x\n    sysctl:\n      a.b: 1\n      a.b: 2\n",
        "version: 1\nvms:\n  - match: x\n    sysctl: {net/ipv4/../x: 1}\n",
    };
    for (const char* text : bad) {
        INFO(text);
        auto r = parse_desired_state(text);
        REQUIRE_FALSE(r);
        CHECK(r.error().code() == EINVAL);
    }
    auto unknown = parse_desired_state("version: 1\nvms:\n  - match: x\n    sysctls: {a: 1}\n");
    CHECK(unknown.error().message().find("sysctls") != std::string::npos);
    CHECK(unknown.error().message().find("line 4") != std::string::npos);
}

TEST_CASE("Sysctls compare field by field", "[apps]") {
    CHECK(sysctl_equal("32768\t60999\n", "32768 60999"));
    CHECK(sysctl_equal("10\n", "10"));
    CHECK_FALSE(sysctl_equal("10\n", "1"));
    CHECK_FALSE(sysctl_equal("1 2\n", "1"));
}

TEST_CASE("Nagios ranges as the Monitoring Plugins guidelines define them", "[apps]") {
    auto r = [](const char* t) {
        auto v = parse_nagios_range(t);
        REQUIRE(v);
        return *v;
    };
    CHECK(r("10").alerts(11));
    CHECK(r("10").alerts(-1));
    CHECK_FALSE(r("10").alerts(10));
    CHECK_FALSE(r("10").alerts(0));
    CHECK(r("10:").alerts(9.5));
    CHECK_FALSE(r("10:").alerts(1e9));
    CHECK(r("~:10").alerts(10.5));
    CHECK_FALSE(r("~:10").alerts(-1e9));
    CHECK(r("10:20").alerts(21));
    CHECK_FALSE(r("10:20").alerts(15));
    CHECK(r("@10:20").alerts(15));
    CHECK_FALSE(r("@10:20").alerts(25));
    for (const char* bad : {"", "x", "20:10", "1:2:3", "@", "~", "nan", "inf", "10 "}) {
        INFO(bad);
        CHECK_FALSE(parse_nagios_range(bad));
    }
}

TEST_CASE("check_cloudvmi's selectors pick one number or say why not", "[apps]") {
    CHECK(select_value("60\n", {}) == 60.0);
    CHECK(select_value("0.52 0.40 0.30 2/93 4121\n", {0, 3, "", ""}) == 0.30);
    CHECK(select_value("a\nb 7\n", {2, 2, "", ""}) == 7.0);
    CHECK(select_value("MemTotal:  1000 kB\nMemAvailable: 600 kB\n", {0, 0, "MemAvailable", ""}) ==
          600.0);
    CHECK(select_value(R"({"requests": 12, "engine": "mailbox"})", {0, 0, "", "requests"}) == 12.0);
    CHECK_FALSE(select_value("abc\n", {}));
    CHECK_FALSE(select_value("1 2\n", {0, 5, "", ""}));
    CHECK_FALSE(select_value("1\n", {9, 1, "", ""}));
    CHECK_FALSE(select_value("MemTotal: x\n", {0, 0, "MemTotal", ""}));
    CHECK_FALSE(select_value(R"({"engine": "mailbox"})", {0, 0, "", "engine"}));
    CHECK_FALSE(select_value("not json", {0, 0, "", "requests"}));
}

TEST_CASE("Baselines round-trip; what was added or changed raises alerts", "[apps]") {
    Baseline before;
    before.modules = {"ext4", "fuse"};
    before.listeners = {"tcp 0.0.0.0:22"};
    before.files = {{"/etc/passwd", "aa"}, {"/etc/shadow", "bb"}};
    before.setuid = {"/usr/bin/passwd 4755"};
    auto again = baseline_from_json(baseline_json(before));
    REQUIRE(again);
    CHECK(again->modules == before.modules);
    CHECK(again->files == before.files);
    CHECK(compare_baselines(before, *again).empty());

    Baseline now = before;
    now.modules.insert("cloudvmi_hide");
    now.modules.erase("fuse");
    now.listeners.insert("tcp 0.0.0.0:4444");
    now.files["/etc/passwd"] = "cc";
    now.files["/etc/shadow"] = "absent";
    now.setuid.insert("/tmp/sh 4755");
    std::multiset<std::string> checks;
    for (const auto& a : compare_baselines(before, now))
        checks.insert(a.check);
    CHECK(checks == std::multiset<std::string>{"module-added", "module-removed", "listener-added",
                                               "file-changed", "file-changed", "setuid-added"});

    CHECK_FALSE(baseline_from_json(nlohmann::json::parse(R"({"version": 2})")));
    CHECK_FALSE(baseline_from_json(nlohmann::json::parse(R"({"version": 1, "modules": 5})")));
    CHECK_FALSE(baseline_from_json(nlohmann::json::parse("[1]")));
}

TEST_CASE("JSON output survives guest names that are not UTF-8", "[apps]") {
    VmSnapshot s;
    s.vm = VmRef{"n", "v", "/vmi/n/v"};
    s.mem.total_kib = 1000;
    ProcessInfo p;
    p.stat.pid = 7;
    p.stat.comm = "\xff\xfe evil";
    p.cmdline = "a\xc3(";
    s.processes.push_back(p);
    std::string text;
    REQUIRE_NOTHROW(text = json_text(snapshot_json(s, 3), 2));
    CHECK(text.find("\xef\xbf\xbd") != std::string::npos);  // U+FFFD
    auto back = nlohmann::json::parse(text);
    CHECK(back["top_cpu"][0]["pid"] == 7);
    Baseline b;
    b.setuid.insert("/tmp/\xff 4755");
    REQUIRE_NOTHROW(text = json_text(baseline_json(b)));
}
