#include "fs/contained_link.h"

#include <climits>
#include <vector>

namespace cloudvmi::fs {

namespace {

// The components of a path, "" and "." left out.
std::vector<std::string> components(std::string_view path) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i <= path.size()) {
        size_t slash = path.find('/', i);
        if (slash == std::string_view::npos) slash = path.size();
        std::string_view c = path.substr(i, slash - i);
        if (!c.empty() && c != ".") out.emplace_back(c);
        i = slash + 1;
    }
    return out;
}

bool starts_with(const std::vector<std::string>& path, const std::vector<std::string>& prefix) {
    if (path.size() < prefix.size()) return false;
    for (size_t i = 0; i < prefix.size(); ++i) {
        if (path[i] != prefix[i]) return false;
    }
    return true;
}

std::string climb(size_t levels) {
    std::string s;
    for (size_t i = 0; i < levels; ++i)
        s += "../";
    return s;
}

}  // namespace

ErrorOr<std::string> contain_link_target(std::string_view tree_top, std::string_view link_path,
                                         std::string_view target) {
    if (target.empty()) return std::string();
    const auto top = components(tree_top);
    auto link_dir = components(link_path);
    if (link_dir.empty() || !starts_with(link_dir, top)) {
        return make_error(
            EINVAL, "link " + std::string(link_path) + " is not below " + std::string(tree_top));
    }
    // Nodes are reached by single safe names, never "..": one here would make the depth,
    // and so every climb computed from it, wrong.
    for (const auto& c : link_dir) {
        if (c == "..") return make_error(EINVAL, "link path " + std::string(link_path) + " climbs");
    }
    link_dir.pop_back();
    if (!starts_with(link_dir, top)) return make_error(EINVAL, "link above its tree");
    const size_t depth = link_dir.size() - top.size();  // of the link's directory in the tree

    // The guest's resolution, lexically: ".." at / stays at /.
    // A ".." after a name is not safe to keep: the host follows that name first, and if it
    // is a link, the ".." climbs from wherever it led (`s -> ../..`, then `s/../../..`).
    // Leading ".."s climb the link's own parent directories, which are real ones.
    bool relative = target.front() != '/';
    std::vector<std::string> at = relative ? link_dir : std::vector<std::string>{};
    bool keep = relative;
    bool named = false;
    for (auto& c : components(target)) {
        if (c != "..") {
            named = true;
            at.push_back(std::move(c));
            continue;
        }
        if (named || at.size() <= top.size()) keep = false;  // after a name, or out of the tree
        if (!at.empty()) at.pop_back();
    }
    if (keep) return std::string(target);

    std::string out;
    if (starts_with(at, top)) {
        out = climb(depth);
        for (size_t i = top.size(); i < at.size(); ++i)
            out += at[i] + "/";
    } else {
        // Out of proc/ or sys/: the guest's / is the VM's root/, a sibling of this tree.
        out = climb(depth + 1) + "root/";
        for (const auto& c : at)
            out += c + "/";
    }
    if (out.empty()) return std::string(".");
    out.pop_back();  // the last "/"
    if (out.size() >= PATH_MAX) {
        return make_error(ENAMETOOLONG, "the target of " + std::string(link_path) +
                                            " is too long once kept inside the VM");
    }
    return out;
}

}  // namespace cloudvmi::fs
