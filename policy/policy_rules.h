// The inside of a loaded policy, shared by the decision code and the loader.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "policy/policy.h"

namespace cloudvmi::policy {

// Who a default lets through.
enum class Grant { kAllow, kRoot, kDeny };

struct Policy::Defaults {
    Grant read = Grant::kAllow;
    Grant change = Grant::kDeny;
    bool audit_reads = false;
};

struct Constraints {
    std::optional<uint64_t> max_size;
    std::optional<std::regex> regex;
    std::string regex_text;
    std::optional<std::pair<int64_t, int64_t>> range;
    std::vector<std::string> values;
    std::vector<int> signals;
    std::vector<std::string> target_names;
    std::vector<uid_t> target_uids;

    bool constrains_value() const { return regex || range || !values.empty(); }
};

struct RateLimit {
    unsigned count = 0;
    std::chrono::steady_clock::duration per{};
};

struct Policy::Rule {
    std::string id;
    bool allow = false;
    std::vector<std::string> nodes, vms, paths;  // globs; empty = any
    uint32_t ops = 0;                            // bit (1 << Operation)
    bool any_caller = true;
    std::vector<uid_t> users;
    std::vector<gid_t> groups;
    Constraints constraints;
    std::optional<RateLimit> rate;
    bool audit = false;
    // Times of the allowed requests within the window, per "node/vm"; guarded by the
    // policy's rate_mutex_.
    std::map<std::string, std::deque<std::chrono::steady_clock::time_point>> windows;
};

constexpr uint32_t op_bit(Operation op) {
    return 1u << static_cast<unsigned>(op);
}
constexpr uint32_t kAllOps = (1u << (static_cast<unsigned>(Operation::kKill) + 1)) - 1;
constexpr uint32_t kChangeOps = kAllOps & ~op_bit(Operation::kRead);

// Values longer than this fail a regex constraint (std::regex recurses per character).
constexpr size_t kMaxRegexInput = 4096;
// (node, vm) pairs whose rate windows a rule remembers.
constexpr size_t kMaxRateKeys = 4096;

}  // namespace cloudvmi::policy
