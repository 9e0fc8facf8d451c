// Path and name globs. Patterns come from the policy file, paths from host callers: both
// are matched in time bounded by the product of their lengths (no backtracking blow-up).
#include <string>
#include <vector>

#include "common/strings.h"
#include "policy/policy.h"

namespace cloudvmi::policy {

namespace {

// One bracket expression at p[i] == '['; sets `matched` for `c` and returns the index
// after it, or npos when it is not closed (then '[' is an ordinary character).
size_t match_class(std::string_view p, size_t i, char c, bool& matched) {
    size_t j = i + 1;
    bool negate = j < p.size() && (p[j] == '!' || p[j] == '^');
    if (negate) ++j;
    bool any = false;
    bool first = true;
    for (; j < p.size() && (p[j] != ']' || first); ++j, first = false) {
        if (j + 2 < p.size() && p[j + 1] == '-' && p[j + 2] != ']') {
            if (c >= p[j] && c <= p[j + 2]) any = true;
            j += 2;
        } else if (p[j] == c) {
            any = true;
        }
    }
    if (j >= p.size()) return std::string_view::npos;
    matched = any != negate;
    return j + 1;
}

// `*`, `?` and classes within one component: the classic greedy algorithm with one
// remembered star, linear in practice and at worst |p|*|s|.
bool match_component(std::string_view p, std::string_view s) {
    size_t pi = 0, si = 0;
    size_t star_p = std::string_view::npos, star_s = 0;
    while (si < s.size()) {
        if (pi < p.size() && p[pi] == '*') {
            star_p = ++pi;
            star_s = si;
            continue;
        }
        if (pi < p.size()) {
            if (p[pi] == '?') {
                ++pi;
                ++si;
                continue;
            }
            if (p[pi] == '[') {
                bool matched = false;
                size_t next = match_class(p, pi, s[si], matched);
                if (next != std::string_view::npos) {
                    if (matched) {
                        pi = next;
                        ++si;
                        continue;
                    }
                } else if (s[si] == '[') {
                    ++pi;
                    ++si;
                    continue;
                }
            } else if (p[pi] == s[si]) {
                ++pi;
                ++si;
                continue;
            }
        }
        if (star_p == std::string_view::npos) return false;
        pi = star_p;
        si = ++star_s;
    }
    while (pi < p.size() && p[pi] == '*')
        ++pi;
    return pi == p.size();
}

std::vector<std::string_view> components(std::string_view path) {
    std::vector<std::string_view> out;
    for (auto c : split(path, '/')) {
        if (!c.empty()) out.push_back(c);
    }
    return out;
}

}  // namespace

bool name_match(std::string_view pattern, std::string_view name) {
    return match_component(pattern, name);
}

bool glob_match(std::string_view pattern, std::string_view path) {
    if (pattern.empty() || path.empty() || pattern[0] != '/' || path[0] != '/') return false;
    auto pc = components(pattern);
    auto sc = components(path);
    // can[i][j]: pattern components from i match path components from j. Filled from the
    // end, so each cell is computed once.
    const size_t P = pc.size(), S = sc.size();
    std::vector<char> can((P + 1) * (S + 1), 0);
    auto at = [&](size_t i, size_t j) -> char& { return can[i * (S + 1) + j]; };
    at(P, S) = 1;
    for (size_t i = P; i-- > 0;) {
        for (size_t j = S + 1; j-- > 0;) {
            if (pc[i] == "**") {
                // Zero components, or one more and ** again.
                at(i, j) = at(i + 1, j) || (j < S && at(i, j + 1));
            } else {
                at(i, j) = j < S && match_component(pc[i], sc[j]) && at(i + 1, j + 1);
            }
        }
    }
    return at(0, 0) != 0;
}

ErrorOr<std::string> normalize_path(std::string_view path) {
    if (path.empty() || path[0] != '/') return make_error(EINVAL, "not an absolute path");
    if (path.find('\0') != std::string_view::npos) return make_error(EINVAL, "path contains NUL");
    std::string out;
    for (auto c : split(path, '/')) {
        if (c.empty() || c == ".") continue;
        if (c == "..") return make_error(EINVAL, "path contains '..'");
        out += '/';
        out += c;
    }
    return out.empty() ? std::string("/") : out;
}

}  // namespace cloudvmi::policy
