// The policy file: YAML, every key checked, every error positioned (file:line:column).
#include <grp.h>
#include <pwd.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

#include "common/signals.h"
#include "common/strings.h"
#include "policy/policy_rules.h"

namespace cloudvmi::policy {

// Builds a Policy from a YAML document; errors are thrown as Bad and become EINVAL.
class PolicyLoader {
  public:
    PolicyLoader(std::string origin, const NameResolver& names)
        : origin_(std::move(origin)), names_(names) {}

    ErrorOr<std::shared_ptr<Policy>> load(const std::string& text);

  private:
    struct Bad {
        std::string what;
    };
    using Keys = std::map<std::string, std::pair<YAML::Node, YAML::Node>>;

    [[noreturn]] void fail(const YAML::Node& at, const std::string& what) const;
    std::string where(const YAML::Mark& m) const;
    Keys keys_of(const YAML::Node& map, const std::set<std::string>& allowed,
                 const std::string& what) const;
    std::string text(const YAML::Node& n, const std::string& key) const;
    int64_t integer(const YAML::Node& n, const std::string& key) const;
    bool boolean(const YAML::Node& n, const std::string& key) const;
    std::vector<YAML::Node> list(const YAML::Node& n, const std::string& key) const;
    std::vector<std::string> globs(const YAML::Node& n, const std::string& key, bool paths) const;
    Grant grant(const YAML::Node& n, const std::string& key) const;
    uint32_t ops(const YAML::Node& n) const;
    uid_t user(const YAML::Node& n) const;
    gid_t group(const YAML::Node& n) const;
    void defaults(const YAML::Node& n, Policy::Defaults& d) const;
    Policy::Rule rule(const YAML::Node& n) const;
    void callers(const YAML::Node& n, Policy::Rule& r) const;
    void constraints(const YAML::Node& n, Policy::Rule& r) const;
    void rate(const YAML::Node& n, Policy::Rule& r) const;

    std::string origin_;
    const NameResolver& names_;
};

void PolicyLoader::fail(const YAML::Node& at, const std::string& what) const {
    throw Bad{where(at.Mark()) + ": " + what};
}

std::string PolicyLoader::where(const YAML::Mark& m) const {
    if (m.line < 0) return origin_;
    return strformat("%s:%d:%d", origin_.c_str(), m.line + 1, m.column + 1);
}

PolicyLoader::Keys PolicyLoader::keys_of(const YAML::Node& map,
                                         const std::set<std::string>& allowed,
                                         const std::string& what) const {
    if (!map.IsMap()) fail(map, what + " must be a mapping");
    Keys out;
    for (const auto& kv : map) {
        if (!kv.first.IsScalar()) fail(kv.first, "unknown key in " + what);
        std::string k = kv.first.Scalar();
        if (!allowed.count(k)) fail(kv.first, "unknown key '" + k + "' in " + what);
        if (!out.emplace(k, std::pair{kv.first, kv.second}).second)
            fail(kv.first, "key '" + k + "' is given twice in " + what);
    }
    return out;
}

std::string PolicyLoader::text(const YAML::Node& n, const std::string& key) const {
    if (!n.IsScalar()) fail(n, "'" + key + "' must be a single value");
    return n.Scalar();
}

int64_t PolicyLoader::integer(const YAML::Node& n, const std::string& key) const {
    auto s = text(n, key);
    try {
        size_t used = 0;
        long long v = std::stoll(s, &used, 10);
        if (used == s.size()) return v;
    } catch (const std::exception&) {
    }
    fail(n, "'" + key + "' must be an integer");
}

bool PolicyLoader::boolean(const YAML::Node& n, const std::string& key) const {
    auto s = text(n, key);
    if (s == "true" || s == "yes") return true;
    if (s == "false" || s == "no") return false;
    fail(n, "'" + key + "' must be true or false");
}

// A list, or a single value taken as a list of one.
std::vector<YAML::Node> PolicyLoader::list(const YAML::Node& n, const std::string& key) const {
    if (n.IsScalar()) return {n};
    if (!n.IsSequence()) fail(n, "'" + key + "' must be a value or a list");
    std::vector<YAML::Node> out;
    for (const auto& item : n)
        out.push_back(item);
    // An empty list would mean "anything" where the key is left out: say so instead.
    if (out.empty()) fail(n, "'" + key + "' names nothing (leave the key out to mean any)");
    return out;
}

std::vector<std::string> PolicyLoader::globs(const YAML::Node& n, const std::string& key,
                                             bool paths) const {
    std::vector<std::string> out;
    for (const auto& item : list(n, key)) {
        std::string g = text(item, key);
        if (paths) {
            auto norm = normalize_path(g);
            if (!norm) fail(item, "path pattern '" + g + "': " + norm.error().message());
            g = *norm;
        } else if (g.empty() || g.find('/') != std::string::npos) {
            fail(item, "'" + g + "' is not a name pattern");
        }
        out.push_back(g);
    }
    return out;
}

Grant PolicyLoader::grant(const YAML::Node& n, const std::string& key) const {
    auto s = text(n, key);
    if (s == "allow") return Grant::kAllow;
    if (s == "root") return Grant::kRoot;
    if (s == "deny") return Grant::kDeny;
    fail(n, "'" + key + "' must be allow, root or deny");
}

uint32_t PolicyLoader::ops(const YAML::Node& n) const {
    uint32_t bits = 0;
    for (const auto& item : list(n, "ops")) {
        std::string name = text(item, "ops");
        if (name == "change") {
            bits |= kChangeOps;
        } else if (auto op = parse_operation(name)) {
            bits |= op_bit(*op);
        } else {
            fail(item, "unknown operation '" + name + "'");
        }
    }
    if (bits == 0) fail(n, "'ops' names no operation");
    return bits;
}

uid_t PolicyLoader::user(const YAML::Node& n) const {
    std::string s = text(n, "user");
    if (auto v = parse_u64(s); v && *v < 0xffffffffu) return static_cast<uid_t>(*v);
    auto found = names_.user ? names_.user(s) : std::nullopt;
    if (!found) fail(n, "no user named '" + s + "'");
    return *found;
}

gid_t PolicyLoader::group(const YAML::Node& n) const {
    std::string s = text(n, "group");
    if (auto v = parse_u64(s); v && *v < 0xffffffffu) return static_cast<gid_t>(*v);
    auto found = names_.group ? names_.group(s) : std::nullopt;
    if (!found) fail(n, "no group named '" + s + "'");
    return *found;
}

void PolicyLoader::defaults(const YAML::Node& n, Policy::Defaults& d) const {
    auto keys = keys_of(n, {"read", "change", "audit_reads"}, "defaults");
    if (auto k = keys.find("read"); k != keys.end()) d.read = grant(k->second.second, "read");
    if (auto k = keys.find("change"); k != keys.end()) d.change = grant(k->second.second, "change");
    if (auto k = keys.find("audit_reads"); k != keys.end())
        d.audit_reads = boolean(k->second.second, "audit_reads");
}

Policy::Rule PolicyLoader::rule(const YAML::Node& n) const {
    auto keys = keys_of(n,
                        {"id", "decision", "nodes", "vms", "paths", "ops", "callers", "constraints",
                         "rate", "audit"},
                        "a rule");
    if (!keys.count("id")) fail(n, "a rule needs an 'id'");
    if (!keys.count("decision")) fail(n, "a rule needs a 'decision'");
    if (!keys.count("ops")) fail(n, "a rule needs 'ops'");
    Policy::Rule r;
    const YAML::Node& id = keys.at("id").second;
    r.id = text(id, "id");
    bool id_ok = !r.id.empty() && r.id.size() <= 64;
    for (char c : r.id)
        id_ok = id_ok &&
                (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.');
    if (!id_ok) fail(id, "a rule id is 1 to 64 letters, digits, '_', '-' or '.'");
    if (r.id == "defaults") fail(id, "'defaults' names the defaults, not a rule");
    std::string decision = text(keys.at("decision").second, "decision");
    if (decision != "allow" && decision != "deny")
        fail(keys.at("decision").second, "'decision' must be allow or deny");
    r.allow = decision == "allow";
    r.ops = ops(keys.at("ops").second);
    if (auto k = keys.find("nodes"); k != keys.end())
        r.nodes = globs(k->second.second, "nodes", false);
    if (auto k = keys.find("vms"); k != keys.end()) r.vms = globs(k->second.second, "vms", false);
    if (auto k = keys.find("paths"); k != keys.end()) {
        r.paths = globs(k->second.second, "paths", true);
    } else if (r.ops != op_bit(Operation::kKill)) {
        fail(n, "rule '" + r.id + "' needs 'paths' (only a kill-only rule may leave them out)");
    }
    if (auto k = keys.find("callers"); k != keys.end()) callers(k->second.second, r);
    if (auto k = keys.find("constraints"); k != keys.end()) {
        if (!r.allow) fail(k->second.first, "constraints narrow an allow rule; this one denies");
        constraints(k->second.second, r);
    }
    if (auto k = keys.find("rate"); k != keys.end()) rate(k->second.second, r);
    if (auto k = keys.find("audit"); k != keys.end()) r.audit = boolean(k->second.second, "audit");
    return r;
}

void PolicyLoader::callers(const YAML::Node& n, Policy::Rule& r) const {
    auto keys = keys_of(n, {"users", "groups"}, "callers");
    r.any_caller = false;
    if (auto k = keys.find("users"); k != keys.end()) {
        for (const auto& u : list(k->second.second, "users"))
            r.users.push_back(user(u));
    }
    if (auto k = keys.find("groups"); k != keys.end()) {
        for (const auto& g : list(k->second.second, "groups"))
            r.groups.push_back(group(g));
    }
    if (r.users.empty() && r.groups.empty()) fail(n, "'callers' names nobody");
}

void PolicyLoader::constraints(const YAML::Node& n, Policy::Rule& r) const {
    auto keys = keys_of(
        n, {"max_size", "regex", "range", "values", "signals", "target_names", "target_uids"},
        "constraints");
    Constraints& c = r.constraints;
    if (auto k = keys.find("max_size"); k != keys.end()) {
        int64_t v = integer(k->second.second, "max_size");
        if (v < 0) fail(k->second.second, "'max_size' must be 0 or more");
        c.max_size = static_cast<uint64_t>(v);
    }
    if (auto k = keys.find("regex"); k != keys.end()) {
        c.regex_text = text(k->second.second, "regex");
        try {
            c.regex.emplace(c.regex_text, std::regex::ECMAScript);
        } catch (const std::regex_error& e) {
            fail(k->second.second, "bad regular expression: " + std::string(e.what()));
        }
    }
    if (auto k = keys.find("range"); k != keys.end()) {
        const YAML::Node& range = k->second.second;
        if (!range.IsSequence() || range.size() != 2) fail(range, "'range' is [MIN, MAX]");
        c.range = {integer(range[0], "range"), integer(range[1], "range")};
        if (c.range->first > c.range->second) fail(range, "'range' has MIN above MAX");
    }
    if (auto k = keys.find("values"); k != keys.end()) {
        for (const auto& v : list(k->second.second, "values"))
            c.values.push_back(text(v, "values"));
    }
    if (auto k = keys.find("signals"); k != keys.end()) {
        for (const auto& s : list(k->second.second, "signals")) {
            auto sig = parse_signal(text(s, "signals"));
            if (!sig) fail(s, "unknown signal '" + s.Scalar() + "'");
            c.signals.push_back(*sig);
        }
    }
    if (auto k = keys.find("target_names"); k != keys.end())
        c.target_names = globs(k->second.second, "target_names", false);
    if (auto k = keys.find("target_uids"); k != keys.end()) {
        for (const auto& u : list(k->second.second, "target_uids"))
            c.target_uids.push_back(user(u));
    }
}

void PolicyLoader::rate(const YAML::Node& n, Policy::Rule& r) const {
    auto keys = keys_of(n, {"count", "per"}, "rate");
    if (!keys.count("count") || !keys.count("per")) fail(n, "'rate' needs 'count' and 'per'");
    int64_t count = integer(keys.at("count").second, "count");
    int64_t per = integer(keys.at("per").second, "per");
    if (count < 1 || count > 1000000) fail(keys.at("count").second, "'count' must be 1..1000000");
    if (per < 1 || per > 86400 * 7) fail(keys.at("per").second, "'per' must be 1..604800 seconds");
    r.rate = RateLimit{static_cast<unsigned>(count), std::chrono::seconds(per)};
}

ErrorOr<std::shared_ptr<Policy>> PolicyLoader::load(const std::string& yaml_text) {
    try {
        YAML::Node root = YAML::Load(yaml_text);
        if (root.IsNull())
            return make_error(EINVAL, origin_ + ": empty policy (version: 1 is needed)");
        auto keys = keys_of(root, {"version", "defaults", "rules"}, "the policy");
        if (!keys.count("version")) fail(root, "the policy needs 'version: 1'");
        if (integer(keys.at("version").second, "version") != 1)
            fail(keys.at("version").second, "only version 1 is known");
        auto policy = std::make_shared<Policy>();
        policy->origin_ = origin_;
        if (auto k = keys.find("defaults"); k != keys.end())
            defaults(k->second.second, *policy->defaults_);
        std::set<std::string> ids;
        if (auto k = keys.find("rules"); k != keys.end()) {
            const YAML::Node& rules = k->second.second;
            if (!rules.IsSequence() && !rules.IsNull()) fail(rules, "'rules' must be a list");
            for (const auto& item : rules) {
                Policy::Rule r = rule(item);
                if (!ids.insert(r.id).second)
                    fail(item["id"], "rule id '" + r.id + "' is used twice");
                policy->rules_.push_back(std::move(r));
            }
        }
        return policy;
    } catch (const Bad& bad) {
        return make_error(EINVAL, bad.what);
    } catch (const YAML::Exception& e) {
        return make_error(EINVAL, where(e.mark) + ": " + e.msg);
    }
}

ErrorOr<std::shared_ptr<Policy>> Policy::parse(const std::string& yaml_text,
                                               const std::string& origin,
                                               const NameResolver& names) {
    return PolicyLoader(origin, names).load(yaml_text);
}

ErrorOr<std::shared_ptr<Policy>> Policy::load_file(const std::string& path,
                                                   const NameResolver& names) {
    std::ifstream f(path);
    if (!f) return errno_error("cannot read policy " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return parse(ss.str(), path, names);
}

NameResolver NameResolver::system() {
    NameResolver r;
    r.user = [](const std::string& name) -> std::optional<uid_t> {
        std::vector<char> buf(16384);
        ::passwd pw{};
        ::passwd* found = nullptr;
        if (::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found)
            return std::nullopt;
        return found->pw_uid;
    };
    r.group = [](const std::string& name) -> std::optional<gid_t> {
        std::vector<char> buf(16384);
        ::group g{};
        ::group* found = nullptr;
        if (::getgrnam_r(name.c_str(), &g, buf.data(), buf.size(), &found) != 0 || !found)
            return std::nullopt;
        return found->gr_gid;
    };
    return r;
}

}  // namespace cloudvmi::policy
