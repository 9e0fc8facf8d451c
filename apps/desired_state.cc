#include "apps/desired_state.h"

#include <sys/stat.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <set>

#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

// Sysctl files are small; desired files are "small config files" (the mount's write path
// and the audit trail see each whole).
constexpr size_t kMaxDesiredFile = 1 << 20;

Error bad(const YAML::Node& node, const std::string& what) {
    auto mark = node.Mark();
    return Error(EINVAL,
                 mark.is_null() ? what : strformat("line %d: %s", mark.line + 1, what.c_str()));
}

// "vm.swappiness", or with slashes where a name holds a dot, as sysctl(8) takes it
// ("net/ipv4/conf/eth0.100/forwarding").
bool valid_sysctl_key(const std::string& key) {
    if (key.empty() || key.size() > 255) return false;
    char sep = key.find('/') != std::string::npos ? '/' : '.';
    for (auto part : split(key, sep)) {
        if (part.empty() || part == "." || part == ".." ||
            part.find('/') != std::string_view::npos) {
            return false;
        }
    }
    return true;
}

std::vector<std::string> words(std::string_view text) {
    std::vector<std::string> out;
    std::string word;
    for (char c : text) {
        if (c == ' ' || c == '\t' || c == '\n') {
            if (!word.empty()) out.push_back(std::move(word));
            word.clear();
        } else {
            word += c;
        }
    }
    if (!word.empty()) out.push_back(std::move(word));
    return out;
}

ErrorOr<void> check_keys(const YAML::Node& map, std::initializer_list<const char*> allowed,
                         const char* what) {
    for (const auto& item : map) {
        auto key = item.first.as<std::string>();
        if (std::none_of(allowed.begin(), allowed.end(), [&](const char* a) { return key == a; })) {
            return std::unexpected(bad(item.first, "unknown key '" + key + "' in " + what));
        }
    }
    return {};
}

ErrorOr<DesiredSetting> parse_file(const YAML::Node& key, const YAML::Node& spec) {
    DesiredSetting s{DesiredSetting::Kind::kFile, key.as<std::string>(), "", 0644};
    if (!valid_guest_path(s.key)) {
        return std::unexpected(bad(key, "'" + s.key + "' is not an absolute path without . or .."));
    }
    if (!spec.IsMap() || !spec["content"]) {
        return std::unexpected(bad(spec, "file " + s.key + " needs 'content:'"));
    }
    TRY(check_keys(spec, {"content", "mode"}, "a file"));
    s.value = spec["content"].as<std::string>();
    if (s.value.size() > kMaxDesiredFile) {
        return std::unexpected(bad(spec, "file " + s.key + " is larger than 1 MiB"));
    }
    if (spec["mode"]) {
        auto text = spec["mode"].as<std::string>();
        if (text.empty() || text.size() > 4 ||
            text.find_first_not_of("01234567") != std::string::npos) {
            return std::unexpected(bad(spec["mode"], "mode must be octal, e.g. 0644"));
        }
        s.mode = static_cast<mode_t>(std::stoul(text, nullptr, 8));
    }
    return s;
}

ErrorOr<DesiredGroup> parse_group(const YAML::Node& node) {
    if (!node.IsMap()) return std::unexpected(bad(node, "each entry of vms: is a map"));
    TRY(check_keys(node, {"match", "sysctl", "files"}, "an entry of vms:"));
    DesiredGroup g;
    const auto& match = node["match"];
    if (!match) return std::unexpected(bad(node, "an entry of vms: needs 'match:'"));
    if (match.IsSequence()) {
        for (const auto& m : match)
            g.match.push_back(m.as<std::string>());
    } else if (match.IsScalar()) {
        g.match.push_back(match.as<std::string>());
    }
    // No pattern would select every VM: an empty list is a mistake, not "all".
    if (g.match.empty() ||
        std::any_of(g.match.begin(), g.match.end(), [](auto& m) { return m.empty(); })) {
        return std::unexpected(bad(match, "match: needs one or more VM globs"));
    }
    std::set<std::string> keys;
    if (const auto& sysctl = node["sysctl"]) {
        if (!sysctl.IsMap()) return std::unexpected(bad(sysctl, "sysctl: is a map of key: value"));
        for (const auto& item : sysctl) {
            if (!item.second.IsScalar()) {  // also an empty value (null)
                return std::unexpected(
                    bad(item.second, "a sysctl's value is a number or a string"));
            }
            DesiredSetting s{DesiredSetting::Kind::kSysctl, item.first.as<std::string>(),
                             item.second.as<std::string>()};
            if (!valid_sysctl_key(s.key)) {
                return std::unexpected(bad(item.first, "'" + s.key + "' is not a sysctl name"));
            }
            if (!keys.insert(s.key).second) {
                return std::unexpected(bad(item.first, "sysctl " + s.key + " is given twice"));
            }
            g.settings.push_back(std::move(s));
        }
    }
    if (const auto& files = node["files"]) {
        if (!files.IsMap())
            return std::unexpected(bad(files, "files: is a map of path: {content}"));
        for (const auto& item : files)
            g.settings.push_back(TRY(parse_file(item.first, item.second)));
    }
    return g;
}

}  // namespace

std::string DesiredSetting::tree_path() const {
    if (kind == Kind::kFile) return "root" + key;
    std::string path = "proc/sys/" + key;
    if (key.find('/') == std::string::npos) std::replace(path.begin() + 9, path.end(), '.', '/');
    return path;
}

std::vector<DesiredSetting> DesiredState::for_vm(const VmRef& vm) const {
    std::vector<DesiredSetting> out;
    std::map<std::pair<DesiredSetting::Kind, std::string>, size_t> index;
    for (const auto& g : groups) {
        if (!vm_selected(vm, g.match)) continue;
        for (const auto& s : g.settings) {
            auto [it, fresh] = index.emplace(std::pair(s.kind, s.key), out.size());
            if (fresh) {
                out.push_back(s);
            } else {
                out[it->second] = s;
            }
        }
    }
    return out;
}

ErrorOr<DesiredState> parse_desired_state(const std::string& yaml) {
    try {
        YAML::Node root = YAML::Load(yaml);
        if (!root.IsMap()) return make_error(EINVAL, "the desired state is a YAML map");
        TRY(check_keys(root, {"version", "vms"}, "the top level"));
        if (!root["version"] || root["version"].as<std::string>() != "1") {
            return std::unexpected(bad(root, "version: 1 is required"));
        }
        DesiredState state;
        if (!root["vms"] || !root["vms"].IsSequence()) {
            return std::unexpected(bad(root, "vms: is a list of {match, sysctl, files}"));
        }
        for (const auto& node : root["vms"])
            state.groups.push_back(TRY(parse_group(node)));
        return state;
    } catch (const YAML::Exception& e) {
        return make_error(EINVAL, e.what());
    }
}

bool sysctl_equal(std::string_view current, std::string_view desired) {
    return words(current) == words(desired);
}

const char* status_name(Drift::Status s) {
    switch (s) {
        case Drift::Status::kInSync:
            return "in-sync";
        case Drift::Status::kDrift:
            return "drift";
        case Drift::Status::kMissing:
            return "missing";
        case Drift::Status::kError:
            return "error";
        case Drift::Status::kApplied:
            return "applied";
        case Drift::Status::kFailed:
            return "failed";
    }
    return "?";
}

namespace {

void measure_file_mode(Drift& d, const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        d.status = Drift::Status::kError;
        d.error = std::string("cannot stat: ") + std::strerror(errno);
    } else if ((st.st_mode & 07777) != d.setting.mode) {
        d.status = Drift::Status::kDrift;
        d.current += strformat(", mode %04o", st.st_mode & 07777);
    }
}

void measure(Drift& d) {
    bool sysctl = d.setting.kind == DesiredSetting::Kind::kSysctl;
    auto path = d.vm.path + "/" + d.setting.tree_path();
    auto text = read_file(path, kMaxDesiredFile);
    if (!text) {
        int code = text.error().code();
        d.current.clear();
        d.error.clear();
        if (code == ENOENT && !sysctl) {
            d.status = Drift::Status::kMissing;
        } else if (code == EFBIG && !sysctl) {
            d.status = Drift::Status::kDrift;  // larger than any content it could be given
            d.current = "more than 1 MiB";
        } else {
            d.status = Drift::Status::kError;
            d.error = code == ENOENT ? "no such sysctl in this guest" : text.error().describe();
        }
        return;
    }
    d.current =
        sysctl ? printable(std::string_view(*text).substr(0, text->find_last_not_of('\n') + 1), 256)
               : std::to_string(text->size()) + " bytes";
    bool equal = sysctl ? sysctl_equal(*text, d.setting.value) : *text == d.setting.value;
    d.status = equal ? Drift::Status::kInSync : Drift::Status::kDrift;
    if (!sysctl) measure_file_mode(d, path);
}

}  // namespace

std::vector<Drift> compare(const VmRef& vm, const std::vector<DesiredSetting>& settings) {
    std::vector<Drift> out;
    for (const auto& s : settings) {
        Drift d{vm, s};
        measure(d);
        out.push_back(std::move(d));
    }
    return out;
}

void apply(Drift& d) {
    if (d.status != Drift::Status::kDrift && d.status != Drift::Status::kMissing) return;
    bool sysctl = d.setting.kind == DesiredSetting::Kind::kSysctl;
    auto path = d.vm.path + "/" + d.setting.tree_path();
    ErrorOr<void> done;
    if (sysctl) {
        done = write_file(path, d.setting.value + "\n");
    } else {
        bool create = d.status == Drift::Status::kMissing;
        done = write_file(path, d.setting.value,
                          create ? std::optional(d.setting.mode) : std::nullopt);
        // The mode of a file that existed, or one the host's umask cut when it was made.
        struct stat st {};
        if (done && ::stat(path.c_str(), &st) == 0 && (st.st_mode & 07777) != d.setting.mode &&
            ::chmod(path.c_str(), d.setting.mode) != 0) {
            done = make_error(errno, "cannot chmod " + path);
        }
    }
    if (!done) {
        d.status = Drift::Status::kFailed;
        d.error = done.error().describe();
        return;
    }
    Drift check{d.vm, d.setting};
    measure(check);
    d.status =
        check.status == Drift::Status::kInSync ? Drift::Status::kApplied : Drift::Status::kFailed;
    if (d.status == Drift::Status::kFailed) {
        d.error = check.error.empty() ? "written, but reads back as " + check.current : check.error;
    }
}

}  // namespace cloudvmi::apps
