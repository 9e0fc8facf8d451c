// Deciding one request: the first matching rule, its constraints, its rate limit.
#include <algorithm>
#include <cerrno>

#include "common/strings.h"
#include "policy/policy_rules.h"

namespace cloudvmi::policy {

namespace {

constexpr std::pair<Operation, std::string_view> kOperationNames[] = {
    {Operation::kRead, "read"},       {Operation::kWrite, "write"},
    {Operation::kCreate, "create"},   {Operation::kTruncate, "truncate"},
    {Operation::kUnlink, "unlink"},   {Operation::kMkdir, "mkdir"},
    {Operation::kRmdir, "rmdir"},     {Operation::kRename, "rename"},
    {Operation::kChmod, "chmod"},     {Operation::kChown, "chown"},
    {Operation::kSymlink, "symlink"}, {Operation::kSetxattr, "setxattr"},
    {Operation::kKill, "kill"},
};

template <class T>
bool contains(const std::vector<T>& v, const T& x) {
    return std::find(v.begin(), v.end(), x) != v.end();
}

bool any_glob(const std::vector<std::string>& globs, std::string_view s, bool path) {
    if (globs.empty()) return true;
    for (const auto& g : globs) {
        if (path ? glob_match(g, s) : name_match(g, s)) return true;
    }
    return false;
}

bool caller_matches(const Policy::Rule& r, const Caller& c) {
    if (r.any_caller) return true;
    if (contains(r.users, c.uid) || contains(r.groups, c.gid)) return true;
    for (gid_t g : c.groups) {
        if (contains(r.groups, g)) return true;
    }
    return false;
}

bool matches(const Policy::Rule& r, const Request& q) {
    return (r.ops & op_bit(q.op)) && any_glob(r.nodes, q.node, false) &&
           any_glob(r.vms, q.vm, false) && any_glob(r.paths, q.path, true) &&
           caller_matches(r, q.caller);
}

// The value as a sysctl writer means it: without one trailing newline.
std::string_view plain_value(std::string_view v) {
    if (!v.empty() && v.back() == '\n') v.remove_suffix(1);
    return v;
}

std::optional<int64_t> parse_int(std::string_view v) {
    if (v.empty() || v.size() > 20) return std::nullopt;
    bool negative = v[0] == '-';
    if (v[0] == '-' || v[0] == '+') v.remove_prefix(1);
    if (v.empty()) return std::nullopt;
    __int128 n = 0;
    for (char c : v) {
        if (c < '0' || c > '9') return std::nullopt;
        n = n * 10 + (c - '0');
    }
    if (negative) n = -n;
    if (n < INT64_MIN || n > INT64_MAX) return std::nullopt;
    return static_cast<int64_t>(n);
}

// Why the request fails the rule's constraints, or "" when it passes them.
std::string violated_value(const Constraints& c, const Request& q) {
    if (c.constrains_value() && q.op == Operation::kWrite && q.offset != 0)
        return "values of this rule are written whole, at offset 0";
    std::string_view plain = plain_value(q.value);
    if (c.regex && (q.value.size() > kMaxRegexInput || !std::regex_match(q.value, *c.regex)))
        return "value does not match " + c.regex_text;
    if (c.range) {
        auto n = parse_int(plain);
        if (!n) return "value is not an integer";
        if (*n < c.range->first || *n > c.range->second) {
            return strformat("value %lld out of range %lld..%lld", static_cast<long long>(*n),
                             static_cast<long long>(c.range->first),
                             static_cast<long long>(c.range->second));
        }
    }
    if (!c.values.empty() && !contains(c.values, std::string(plain)))
        return "value is not one of the allowed values";
    return "";
}

std::string violated(const Constraints& c, const Request& q) {
    if (c.max_size && q.size > *c.max_size)
        return strformat("size %llu over the maximum %llu", static_cast<unsigned long long>(q.size),
                         static_cast<unsigned long long>(*c.max_size));
    if (q.op == Operation::kKill) {
        if (!c.signals.empty() && !contains(c.signals, q.signal))
            return strformat("signal %d is not allowed", q.signal);
        if (!c.target_names.empty() && !any_glob(c.target_names, q.target_name, false))
            return "target '" + q.target_name + "' is not an allowed process name";
        if (!c.target_uids.empty() && (!q.target_uid || !contains(c.target_uids, *q.target_uid)))
            return "target's uid is not allowed";
        return "";
    }
    return violated_value(c, q);
}

Decision from_defaults(const Policy::Defaults& d, const Request& q) {
    Grant g = is_change(q.op) ? d.change : d.read;
    Decision out;
    out.rule = "defaults";
    out.audit = is_change(q.op) || d.audit_reads;
    out.allowed = g == Grant::kAllow || (g == Grant::kRoot && q.caller.uid == 0);
    out.error = out.allowed ? 0 : EACCES;
    const char* what = is_change(q.op) ? "changes" : "reads";
    out.reason = strformat("no rule matches; %s are %s by default", what,
                           g == Grant::kAllow  ? "allowed"
                           : g == Grant::kRoot ? "allowed to host root only"
                                               : "denied");
    return out;
}

}  // namespace

std::string_view operation_name(Operation op) {
    for (const auto& [o, name] : kOperationNames) {
        if (o == op) return name;
    }
    return "?";
}

std::optional<Operation> parse_operation(std::string_view name) {
    for (const auto& [o, n] : kOperationNames) {
        if (n == name) return o;
    }
    return std::nullopt;
}

bool is_change(Operation op) {
    return op != Operation::kRead;
}

Policy::Policy() : defaults_(std::make_unique<Defaults>()) {}
Policy::~Policy() = default;

std::shared_ptr<Policy> Policy::builtin_default() {
    auto p = std::make_shared<Policy>();
    p->origin_ = "built-in";
    return p;
}

const std::string& Policy::origin() const {
    return origin_;
}

size_t Policy::rule_count() const {
    return rules_.size();
}

Decision Policy::decide(const Request& request, std::chrono::steady_clock::time_point now) {
    return evaluate(request, now);
}

Decision Policy::explain(const Request& request) const {
    return const_cast<Policy*>(this)->evaluate(request, std::nullopt);
}

bool Policy::may_allow(const Request& q) const {
    auto it =
        std::find_if(rules_.begin(), rules_.end(), [&](const Rule& r) { return matches(r, q); });
    if (it != rules_.end()) return it->allow;
    return from_defaults(*defaults_, q).allowed;
}

// `now` set: an allowed request is counted against its rule's rate limit.
Decision Policy::evaluate(const Request& q,
                          std::optional<std::chrono::steady_clock::time_point> now) {
    auto it =
        std::find_if(rules_.begin(), rules_.end(), [&](const Rule& r) { return matches(r, q); });
    if (it == rules_.end()) return from_defaults(*defaults_, q);
    Rule& r = *it;
    Decision d;
    d.rule = r.id;
    d.audit = is_change(q.op) || r.audit || defaults_->audit_reads;
    if (!r.allow) {
        d.error = EACCES;
        d.reason = "denied by rule " + r.id;
        return d;
    }
    if (std::string why = violated(r.constraints, q); !why.empty()) {
        d.error = EACCES;
        d.reason = why;
        return d;
    }
    if (r.rate && !take_rate(r, q, now)) {
        d.error = EAGAIN;
        d.reason =
            strformat("rate limit of %u per %llds used up", r.rate->count,
                      static_cast<long long>(
                          std::chrono::duration_cast<std::chrono::seconds>(r.rate->per).count()));
        return d;
    }
    d.allowed = true;
    d.reason = "allowed by rule " + r.id;
    return d;
}

bool Policy::take_rate(Rule& r, const Request& q,
                       std::optional<std::chrono::steady_clock::time_point> now) {
    std::lock_guard lock(rate_mutex_);
    std::string key = q.node + "/" + q.vm;
    auto found = r.windows.find(key);
    if (found == r.windows.end()) {
        if (!now) return r.rate->count > 0;  // explain: a fresh window
        if (r.windows.size() >= kMaxRateKeys) r.windows.erase(r.windows.begin());
        found = r.windows.emplace(key, std::deque<std::chrono::steady_clock::time_point>{}).first;
    }
    auto& window = found->second;
    auto at = now.value_or(std::chrono::steady_clock::now());
    while (!window.empty() && at - window.front() >= r.rate->per)
        window.pop_front();
    if (window.size() >= r.rate->count) return false;
    if (now) window.push_back(*now);
    return true;
}

}  // namespace cloudvmi::policy
