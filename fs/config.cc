#include "fs/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <set>
#include <sstream>

#include "common/strings.h"
#include "redirector/gdb/rsp_connection.h"

namespace cloudvmi::fs {

namespace {

std::string where(const std::string& origin, const YAML::Node& n) {
    auto m = n.Mark();
    if (m.line < 0) return origin;
    return strformat("%s:%d", origin.c_str(), m.line + 1);
}

std::unexpected<Error> bad(const std::string& origin, const YAML::Node& n, const std::string& what) {
    return std::unexpected(Error(EINVAL, where(origin, n) + ": " + what));
}

template <class T>
ErrorOr<T> scalar(const std::string& origin, const YAML::Node& n, const std::string& key) {
    if (!n.IsScalar()) return bad(origin, n, "'" + key + "' must be a single value");
    try {
        return n.as<T>();
    } catch (const YAML::Exception&) {
        return bad(origin, n, "'" + key + "' has a value of the wrong type");
    }
}

ErrorOr<void> only_keys(const std::string& origin, const YAML::Node& map,
                        const std::set<std::string>& allowed, const std::string& what) {
    for (const auto& kv : map) {
        std::string k = kv.first.as<std::string>();
        if (!allowed.count(k)) return bad(origin, kv.first, "unknown key '" + k + "' in " + what);
    }
    return {};
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    std::string h(buf);
    return h.substr(0, h.find('.'));
}

}  // namespace

bool is_valid_entry_name(const std::string& name) {
    if (name.empty() || name.size() > 128 || name == "." || name == ".." || name[0] == '.') {
        return false;
    }
    for (char c : name) {
        bool ok = std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
        if (!ok) return false;
    }
    return true;
}

ErrorOr<Config> Config::parse(const std::string& text, const std::string& origin) {
    YAML::Node root;
    try {
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        return make_error(EINVAL, strformat("%s:%d: %s", origin.c_str(), e.mark.line + 1,
                                            e.msg.c_str()));
    }
    Config c;
    if (root.IsNull()) return make_error(EINVAL, origin + ": empty configuration");
    if (!root.IsMap()) return bad(origin, root, "the configuration must be a mapping");
    TRY(only_keys(origin, root, {"node", "state_dir", "request_timeout_ms", "cache", "vms"},
                  "the configuration"));
    c.node = root["node"] ? TRY(scalar<std::string>(origin, root["node"], "node")) : host_name();
    if (!is_valid_entry_name(c.node)) {
        return bad(origin, root["node"], "node name '" + c.node + "' is not usable as a file name");
    }
    if (root["state_dir"]) c.state_dir = TRY(scalar<std::string>(origin, root["state_dir"], "state_dir"));
    if (root["request_timeout_ms"]) {
        c.request_timeout_ms = TRY(scalar<long>(origin, root["request_timeout_ms"], "request_timeout_ms"));
        if (c.request_timeout_ms < 100 || c.request_timeout_ms > 600000) {
            return bad(origin, root["request_timeout_ms"], "request_timeout_ms must be 100..600000");
        }
    }
    if (auto cache = root["cache"]) {
        if (!cache.IsMap()) return bad(origin, cache, "'cache' must be a mapping");
        TRY(only_keys(origin, cache, {"proc_attr", "proc_entry", "root_attr", "root_entry"}, "cache"));
        auto seconds = [&](const char* key, double& out) -> ErrorOr<void> {
            if (!cache[key]) return {};
            out = TRY(scalar<double>(origin, cache[key], key));
            if (out < 0 || out > 3600) return bad(origin, cache[key], std::string(key) + " must be 0..3600");
            return {};
        };
        TRY(seconds("proc_attr", c.cache.proc_attr));
        TRY(seconds("proc_entry", c.cache.proc_entry));
        TRY(seconds("root_attr", c.cache.root_attr));
        TRY(seconds("root_entry", c.cache.root_entry));
    }
    std::set<std::string> names;
    if (auto vms = root["vms"]) {
        if (!vms.IsSequence()) return bad(origin, vms, "'vms' must be a list");
        for (const auto& v : vms) {
            if (!v.IsMap()) return bad(origin, v, "each VM must be a mapping");
            TRY(only_keys(origin, v, {"name", "gdb", "qmp"}, "a VM"));
            if (!v["name"] || !v["gdb"]) return bad(origin, v, "a VM needs 'name' and 'gdb'");
            VmConfig vm;
            vm.name = TRY(scalar<std::string>(origin, v["name"], "name"));
            vm.gdb = TRY(scalar<std::string>(origin, v["gdb"], "gdb"));
            if (v["qmp"]) vm.qmp = TRY(scalar<std::string>(origin, v["qmp"], "qmp"));
            if (!is_valid_entry_name(vm.name)) {
                return bad(origin, v["name"], "VM name '" + vm.name + "' is not usable as a file name");
            }
            if (!names.insert(vm.name).second) {
                return bad(origin, v["name"], "VM name '" + vm.name + "' is used twice");
            }
            if (auto e = gdb::Endpoint::parse(vm.gdb); !e) {
                return bad(origin, v["gdb"], e.error().message());
            }
            c.vms.push_back(std::move(vm));
        }
    }
    return c;
}

ErrorOr<Config> Config::load_file(const std::string& path) {
    std::ifstream f(path);
    if (!f) return errno_error("cannot read configuration " + path);
    std::stringstream ss;
    ss << f.rdbuf();
    return parse(ss.str(), path);
}

}  // namespace cloudvmi::fs
