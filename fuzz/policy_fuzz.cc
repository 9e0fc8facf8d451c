// Fuzzes the policy loader (policy/policy.h Policy::parse, on yaml-cpp) and the decisions
// of what it accepts, with paths and values taken from the input too.
//
// Input: the text of a policy file; its last line, if it starts with "#?", is a request:
// "#?OP PATH VALUE".
#include <string>

#include "fuzz/fuzz_check.h"
#include "policy/policy.h"

using namespace cloudvmi;
using namespace cloudvmi::policy;

FUZZ_QUIET_LOGS()

namespace {

NameResolver names() {
    NameResolver r;
    r.user = [](const std::string& n) -> std::optional<uid_t> {
        if (n == "alice") return 1000;
        return std::nullopt;
    };
    r.group = [](const std::string& n) -> std::optional<gid_t> {
        if (n == "ops") return 500;
        return std::nullopt;
    };
    return r;
}

Request request_from(const std::string& text) {
    Request q;
    q.node = "n";
    q.vm = "vm";
    q.op = Operation::kWrite;
    q.path = "/proc/sys/vm/swappiness";
    q.value = "10\n";
    auto at = text.rfind("\n#?");
    if (at == std::string::npos) return q;
    std::string line = text.substr(at + 3);
    auto sp1 = line.find(' ');
    if (auto op = parse_operation(line.substr(0, sp1))) q.op = *op;
    if (sp1 == std::string::npos) return q;
    auto sp2 = line.find(' ', sp1 + 1);
    q.path = line.substr(sp1 + 1, sp2 == std::string::npos ? std::string::npos : sp2 - sp1 - 1);
    if (sp2 != std::string::npos) q.value = line.substr(sp2 + 1);
    q.size = q.value.size();
    q.signal = 9;
    q.target_name = q.value;
    q.target_uid = 1000;
    return q;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string text(fuzz::as_text(data, size));
    // Never an exception: a bad file is an error that names it and its position.
    auto p = Policy::parse(text, "fuzz.yaml", names());
    if (!p) {
        FUZZ_CHECK(p.error().code() == EINVAL);
        FUZZ_CHECK(p.error().message().rfind("fuzz.yaml", 0) == 0);
        return 0;
    }
    Request q = request_from(text);
    auto normal = normalize_path(q.path);
    if (normal) q.path = *normal;
    Decision explained = (*p)->explain(q);
    Decision decided = (*p)->decide(q, std::chrono::steady_clock::now());
    // explain() is decide() without the rate limit: the same rule, and no more allowed.
    FUZZ_CHECK(explained.rule == decided.rule);
    FUZZ_CHECK(!decided.allowed || explained.allowed);
    FUZZ_CHECK(decided.allowed == (decided.error == 0));
    FUZZ_CHECK(decided.error == 0 || decided.error == EACCES || decided.error == EAGAIN);
    FUZZ_CHECK(!decided.reason.empty());
    if (is_change(q.op)) FUZZ_CHECK(decided.audit);
    // Globs from the input against the input's own path.
    (void)glob_match(q.value.empty() ? "/" : q.value, q.path);
    return 0;
}
