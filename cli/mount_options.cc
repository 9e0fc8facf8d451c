#include "cli/mount_options.h"

#include "common/strings.h"

namespace cloudvmi::cli {

namespace {

// Ours, by their -o spelling; the long option is "--" + the name with '_' as '-'.
struct OwnOption {
    const char* o_name;
    const char* long_name;
    std::optional<std::string> MountOptions::*field;
};
constexpr OwnOption kOwn[] = {
    {"config", "--config", &MountOptions::config},
    {"state_dir", "--state-dir", &MountOptions::state_dir},
    {"log_level", "--log-level", &MountOptions::log_level},
};

// Takes our entries out of one -o list; returns what is left for FUSE ("" if nothing).
ErrorOr<std::string> take_own_entries(const std::string& list, MountOptions& out) {
    std::string rest;
    for (auto piece : split(list, ',')) {
        std::string entry(piece);
        bool ours = false;
        for (const auto& own : kOwn) {
            std::string prefix = std::string(own.o_name) + "=";
            if (entry.rfind(prefix, 0) != 0) continue;
            if (entry.size() == prefix.size()) {
                return make_error(EINVAL, strformat("-o %s needs a value", own.o_name));
            }
            out.*own.field = entry.substr(prefix.size());
            ours = true;
        }
        if (ours || entry.empty()) continue;
        if (!rest.empty()) rest += ',';
        rest += entry;
    }
    return rest;
}

// A long option of ours at args[i] ("--config=F" or "--config F"): consumes it.
ErrorOr<bool> take_long_option(const std::vector<std::string>& args, size_t& i, MountOptions& out) {
    const std::string& a = args[i];
    for (const auto& own : kOwn) {
        std::string name = own.long_name;
        if (a == name) {
            if (i + 1 >= args.size()) return make_error(EINVAL, name + " needs a value");
            out.*own.field = args[++i];
            return true;
        }
        if (a.rfind(name + "=", 0) == 0) {
            out.*own.field = a.substr(name.size() + 1);
            return true;
        }
    }
    return false;
}

}  // namespace

ErrorOr<MountOptions> parse_mount_options(const std::vector<std::string>& args) {
    MountOptions out;
    out.fuse_args.push_back("cloudvmi");
    std::vector<std::string> positional;
    for (size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a == "-h" || a == "--help") {
            out.help = true;
        } else if (a == "-V" || a == "--version") {
            out.version = true;
        } else if (a == "-o" || (a.rfind("-o", 0) == 0 && a.size() > 2)) {
            std::string list = a.size() > 2 ? a.substr(2) : "";
            if (a == "-o") {
                if (i + 1 >= args.size()) return make_error(EINVAL, "-o needs a value");
                list = args[++i];
            }
            std::string rest = TRY(take_own_entries(list, out));
            if (!rest.empty()) {
                out.fuse_args.push_back("-o");
                out.fuse_args.push_back(rest);
            }
        } else if (TRY(take_long_option(args, i, out))) {
        } else if (a.rfind("--", 0) == 0 && a.size() > 2) {
            return make_error(EINVAL, "unknown option " + a);
        } else if (!a.empty() && a[0] == '-') {
            out.fuse_args.push_back(a);  // -f, -d, -s: FUSE's
        } else {
            positional.push_back(a);
        }
    }
    if (out.help || out.version) return out;
    if (positional.empty()) return make_error(EINVAL, "expected a mount point");
    if (positional.size() > 2) {
        return make_error(EINVAL, strformat("expected a mount point (after at most a source), "
                                            "got %zu arguments",
                                            positional.size()));
    }
    out.mountpoint = positional.back();
    out.fuse_args.push_back(out.mountpoint);
    return out;
}

}  // namespace cloudvmi::cli
