// Fuzzes the applications' parsers of guest text (apps/procfs.h), the desired-state file,
// threshold ranges, check_cloudvmi's value selection and the baselines secmon reads back.
//
// Input: one selector byte (which parser), then the text.
#include <nlohmann/json.hpp>
#include <string>

#include "apps/desired_state.h"
#include "apps/nagios_range.h"
#include "apps/procfs.h"
#include "apps/security_checks.h"
#include "apps/value_select.h"
#include "fuzz/fuzz_check.h"

using namespace cloudvmi;
using namespace cloudvmi::apps;

FUZZ_QUIET_LOGS()

namespace {

void proc_files(std::string_view text) {
    (void)parse_loadavg(text);
    (void)parse_meminfo(text);
    if (auto u = parse_uptime(text)) FUZZ_CHECK(*u >= 0);
    if (auto s = parse_pid_stat(text)) FUZZ_CHECK(s->comm.size() < text.size());
    if (auto s = parse_pid_status(text)) FUZZ_CHECK(s->name.size() < text.size());
    FUZZ_CHECK(cmdline_text(text).find('\0') == std::string::npos);
    if (auto p = parse_pid_name(text)) FUZZ_CHECK(*p > 0);
    for (const char* proto : {"tcp", "udp6"}) {
        for (const auto& l : parse_net_listeners(text, proto))
            FUZZ_CHECK(l.port <= 65535);
    }
    for (const auto& m : parse_modules(text))
        FUZZ_CHECK(!m.empty());
    auto users = parse_passwd(text);
    for (const auto& [uid, name] : users)
        FUZZ_CHECK(!user_name(users, uid).empty());
}

void desired_state(std::string_view text) {
    auto state = parse_desired_state(std::string(text));
    if (!state) return;
    for (const auto& g : state->groups) {
        for (const auto& s : g.settings) {
            // No setting may name a file outside the VM's proc/sys or root trees.
            auto path = s.tree_path();
            FUZZ_CHECK(path.find("/../") == std::string::npos && !path.ends_with("/.."));
            FUZZ_CHECK(path.starts_with("proc/sys/") || path.starts_with("root/"));
        }
    }
}

void range_and_selection(std::string_view text) {
    if (auto r = parse_nagios_range(text)) {
        FUZZ_CHECK(r->start_infinite || r->end_infinite || r->start <= r->end);
        (void)r->alerts(0);
    }
    auto nl = text.find('\n');
    std::string key(text.substr(0, nl == std::string_view::npos ? 0 : nl));
    auto body = nl == std::string_view::npos ? text : text.substr(nl + 1);
    (void)select_value(body, {});
    (void)select_value(body, {2, 3, "", ""});
    (void)select_value(body, {0, 0, key, ""});
    (void)select_value(body, {0, 0, "", key});
}

void baseline(std::string_view text) {
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded()) return;
    if (auto b = baseline_from_json(j)) {
        auto again = baseline_from_json(baseline_json(*b));
        FUZZ_CHECK(again && again->files == b->files && again->modules == b->modules);
        FUZZ_CHECK(compare_baselines(*b, *again).empty());
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    auto text = fuzz::as_text(data + 1, size - 1);
    switch (data[0] % 4) {
        case 0:
            proc_files(text);
            break;
        case 1:
            desired_state(text);
            break;
        case 2:
            range_and_selection(text);
            break;
        case 3:
            baseline(text);
            break;
    }
    return 0;
}
