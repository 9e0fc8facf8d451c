#include "fs/config.h"

#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/strings.h"
#include "redirector/gdb/rsp_connection.h"

namespace cloudvmi::fs {

namespace {

// One key of a mapping: yaml-cpp marks an empty (null) value at the next token, possibly
// lines further on, so errors about a value are reported on its key's line when it is null.
struct Entry {
    YAML::Node key;
    YAML::Node value;
    const YAML::Node& located() const { return value.IsNull() ? key : value; }
};

std::string where(const std::string& origin, const YAML::Node& n) {
    auto m = n.Mark();
    if (m.line < 0) return origin;
    return strformat("%s:%d", origin.c_str(), m.line + 1);
}

std::unexpected<Error> bad(const std::string& origin, const YAML::Node& n,
                           const std::string& what) {
    return std::unexpected(Error(EINVAL, where(origin, n) + ": " + what));
}

template <class T>
ErrorOr<T> scalar(const std::string& origin, const Entry& e, const std::string& key) {
    if (!e.value.IsScalar())
        return bad(origin, e.located(), "'" + key + "' must be a single value");
    try {
        return e.value.as<T>();
    } catch (const YAML::Exception&) {
        return bad(origin, e.located(), "'" + key + "' has a value of the wrong type");
    }
}

// The keys of `map`, each checked: a plain word, one of `allowed`, given once (yaml-cpp
// accepts repeated keys and lets the first one win silently).
ErrorOr<std::map<std::string, Entry>> entries(const std::string& origin, const YAML::Node& map,
                                              const std::set<std::string>& allowed,
                                              const std::string& what) {
    std::map<std::string, Entry> out;
    for (const auto& kv : map) {
        if (!kv.first.IsScalar()) return bad(origin, kv.first, "unknown key in " + what);
        std::string k = kv.first.Scalar();
        if (!allowed.count(k)) return bad(origin, kv.first, "unknown key '" + k + "' in " + what);
        if (!out.emplace(k, Entry{kv.first, kv.second}).second) {
            return bad(origin, kv.first, "key '" + k + "' is given twice in " + what);
        }
    }
    return out;
}

std::string host_name() {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
    std::string h(buf);
    return h.substr(0, h.find('.'));
}

// `policy:` and `audit:`.
ErrorOr<void> parse_governance(const std::string& origin, const std::map<std::string, Entry>& top,
                               Config& c) {
    if (auto it = top.find("policy"); it != top.end()) {
        c.policy = TRY(scalar<std::string>(origin, it->second, "policy"));
        if (c.policy->empty() || (*c.policy)[0] != '/')
            return bad(origin, it->second.located(), "policy must be an absolute path");
    }
    auto it = top.find("audit");
    if (it == top.end()) return {};
    const Entry& audit = it->second;
    if (!audit.value.IsMap()) return bad(origin, audit.located(), "'audit' must be a mapping");
    auto keys = TRY(entries(origin, audit.value, {"file", "max_bytes", "keep", "syslog"}, "audit"));
    if (auto k = keys.find("file"); k != keys.end()) {
        c.audit.file = TRY(scalar<std::string>(origin, k->second, "file"));
        if (!c.audit.file.empty() && c.audit.file[0] != '/')
            return bad(origin, k->second.located(), "audit file must be an absolute path");
    }
    if (auto k = keys.find("max_bytes"); k != keys.end()) {
        long long v = TRY(scalar<long long>(origin, k->second, "max_bytes"));
        if (v < 4096) return bad(origin, k->second.located(), "max_bytes must be at least 4096");
        c.audit.max_bytes = static_cast<uint64_t>(v);
    }
    if (auto k = keys.find("keep"); k != keys.end()) {
        c.audit.keep = TRY(scalar<int>(origin, k->second, "keep"));
        if (c.audit.keep < 0 || c.audit.keep > 100)
            return bad(origin, k->second.located(), "keep must be 0..100");
    }
    if (auto k = keys.find("syslog"); k != keys.end())
        c.audit.syslog = TRY(scalar<bool>(origin, k->second, "syslog"));
    return {};
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

namespace {

// A node on another host, reached by `ssh [ssh_options] HOST remote_command`.
ErrorOr<void> parse_remote_node(const std::string& origin, const std::map<std::string, Entry>& keys,
                                NodeConfig& node) {
    if (keys.count("gdb_dir"))
        return bad(origin, keys.at("gdb_dir").located(), "gdb_dir is the remote host's business");
    node.ssh = TRY(scalar<std::string>(origin, keys.at("ssh"), "ssh"));
    // ssh would take a leading '-' as an option of its own.
    if (node.ssh.empty() || node.ssh.starts_with("-") ||
        node.ssh.find_first_of(" \t\n") != std::string::npos)
        return bad(origin, keys.at("ssh").located(), "ssh must be a host ([user@]host)");
    if (auto o = keys.find("ssh_options"); o != keys.end()) {
        if (!o->second.value.IsSequence())
            return bad(origin, o->second.located(), "ssh_options must be a list of arguments");
        for (const auto& arg : o->second.value) {
            if (!arg.IsScalar()) return bad(origin, arg, "each ssh option must be a string");
            node.ssh_options.push_back(arg.as<std::string>());
        }
    }
    if (auto r = keys.find("remote_command"); r != keys.end()) {
        node.remote_command = TRY(scalar<std::string>(origin, r->second, "remote_command"));
        if (node.remote_command.empty())
            return bad(origin, r->second.located(), "remote_command must not be empty");
    }
    return {};
}

// nodes: libvirt connections whose running domains appear under /vmi/<name>/.
ErrorOr<void> parse_nodes(const std::string& origin, const std::map<std::string, Entry>& top,
                          Config& c) {
    auto it = top.find("nodes");
    if (it == top.end()) return {};
    const Entry& nodes = it->second;
    if (!nodes.value.IsSequence()) return bad(origin, nodes.located(), "'nodes' must be a list");
    std::set<std::string> names;
    if (!c.vms.empty()) names.insert(c.node);
    for (const auto& n : nodes.value) {
        if (!n.IsMap()) return bad(origin, n, "each node must be a mapping");
        auto keys = TRY(entries(origin, n,
                                {"name", "uri", "gdb_dir", "ssh", "ssh_options", "remote_command"},
                                "a node"));
        if (!keys.count("name") || (keys.count("uri") == keys.count("ssh")))
            return bad(origin, n, "a node needs 'name' and either 'uri' (libvirt) or 'ssh'");
        NodeConfig node;
        node.name = TRY(scalar<std::string>(origin, keys.at("name"), "name"));
        if (!is_valid_entry_name(node.name) || node.name == ".cloudvmi") {
            return bad(origin, keys.at("name").located(),
                       "node name '" + node.name + "' is not usable as a file name");
        }
        if (!names.insert(node.name).second) {
            return bad(origin, keys.at("name").located(),
                       "node name '" + node.name + "' is used twice (the vms: list is node '" +
                           c.node + "')");
        }
        if (keys.count("ssh")) {
            TRY(parse_remote_node(origin, keys, node));
            c.nodes.push_back(std::move(node));
            continue;
        }
        if (keys.count("ssh_options") || keys.count("remote_command"))
            return bad(origin, n, "ssh_options and remote_command need 'ssh'");
        node.uri = TRY(scalar<std::string>(origin, keys.at("uri"), "uri"));
        if (node.uri.empty() || node.uri.find_first_of(" \n") != std::string::npos)
            return bad(origin, keys.at("uri").located(), "uri must be a libvirt URI or alias");
        if (auto g = keys.find("gdb_dir"); g != keys.end()) {
            node.gdb_dir = TRY(scalar<std::string>(origin, g->second, "gdb_dir"));
            // QEMU's own option syntax: a comma would end the path.
            if (!node.gdb_dir.starts_with("/") || node.gdb_dir.find(',') != std::string::npos)
                return bad(origin, g->second.located(),
                           "gdb_dir must be an absolute path without commas");
        }
        c.nodes.push_back(std::move(node));
    }
    return {};
}

}  // namespace

ErrorOr<Config> Config::parse(const std::string& text, const std::string& origin) {
    YAML::Node root;
    try {
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        return make_error(EINVAL,
                          strformat("%s:%d: %s", origin.c_str(), e.mark.line + 1, e.msg.c_str()));
    }
    Config c;
    if (root.IsNull()) return make_error(EINVAL, origin + ": empty configuration");
    if (!root.IsMap()) return bad(origin, root, "the configuration must be a mapping");
    auto top = TRY(entries(
        origin, root,
        {"node", "state_dir", "request_timeout_ms", "attach_timeout_ms", "engine",
         "operators_group", "allow_consuming_reads", "cache", "vms", "nodes", "policy", "audit"},
        "the configuration"));
    if (auto it = top.find("node"); it != top.end()) {
        c.node = TRY(scalar<std::string>(origin, it->second, "node"));
        if (!is_valid_entry_name(c.node)) {
            return bad(origin, it->second.located(),
                       "node name '" + c.node + "' is not usable as a file name");
        }
    } else {
        c.node = host_name();
    }
    if (auto it = top.find("state_dir"); it != top.end()) {
        c.state_dir = TRY(scalar<std::string>(origin, it->second, "state_dir"));
    }
    if (auto it = top.find("request_timeout_ms"); it != top.end()) {
        c.request_timeout_ms = TRY(scalar<long>(origin, it->second, "request_timeout_ms"));
        if (c.request_timeout_ms < 100 || c.request_timeout_ms > 600000) {
            return bad(origin, it->second.located(), "request_timeout_ms must be 100..600000");
        }
    }
    if (auto it = top.find("attach_timeout_ms"); it != top.end()) {
        c.attach_timeout_ms = TRY(scalar<long>(origin, it->second, "attach_timeout_ms"));
        if (c.attach_timeout_ms < 100 || c.attach_timeout_ms > 600000) {
            return bad(origin, it->second.located(), "attach_timeout_ms must be 100..600000");
        }
    }
    if (auto it = top.find("engine"); it != top.end()) {
        c.engine = TRY(scalar<std::string>(origin, it->second, "engine"));
        if (c.engine != "mailbox" && c.engine != "trap") {
            return bad(origin, it->second.located(), "engine must be mailbox or trap");
        }
    }
    if (auto it = top.find("operators_group"); it != top.end()) {
        c.operators_group = TRY(scalar<std::string>(origin, it->second, "operators_group"));
        if (c.operators_group.empty() ||
            c.operators_group.find_first_of(" :/\n") != std::string::npos) {
            return bad(origin, it->second.located(),
                       "operators_group must be a group name or number");
        }
    }
    if (auto it = top.find("allow_consuming_reads"); it != top.end()) {
        c.allow_consuming_reads = TRY(scalar<bool>(origin, it->second, "allow_consuming_reads"));
    }
    if (auto it = top.find("cache"); it != top.end()) {
        const Entry& cache = it->second;
        if (!cache.value.IsMap()) return bad(origin, cache.located(), "'cache' must be a mapping");
        auto keys = TRY(entries(origin, cache.value,
                                {"proc_attr", "proc_entry", "root_attr", "root_entry"}, "cache"));
        auto seconds = [&](const char* key, double& out) -> ErrorOr<void> {
            auto k = keys.find(key);
            if (k == keys.end()) return {};
            out = TRY(scalar<double>(origin, k->second, key));
            // Written so that NaN fails too.
            if (!(out >= 0 && out <= 3600)) {
                return bad(origin, k->second.located(), std::string(key) + " must be 0..3600");
            }
            return {};
        };
        TRY(seconds("proc_attr", c.cache.proc_attr));
        TRY(seconds("proc_entry", c.cache.proc_entry));
        TRY(seconds("root_attr", c.cache.root_attr));
        TRY(seconds("root_entry", c.cache.root_entry));
    }
    TRY(parse_governance(origin, top, c));
    std::set<std::string> names;
    if (auto it = top.find("vms"); it != top.end()) {
        const Entry& vms = it->second;
        if (!vms.value.IsSequence()) return bad(origin, vms.located(), "'vms' must be a list");
        for (const auto& v : vms.value) {
            if (!v.IsMap()) return bad(origin, v, "each VM must be a mapping");
            auto keys = TRY(entries(origin, v, {"name", "gdb", "qmp"}, "a VM"));
            if (!keys.count("name") || !keys.count("gdb"))
                return bad(origin, v, "a VM needs 'name' and 'gdb'");
            const Entry& name = keys.at("name");
            const Entry& gdb = keys.at("gdb");
            VmConfig vm;
            vm.name = TRY(scalar<std::string>(origin, name, "name"));
            vm.gdb = TRY(scalar<std::string>(origin, gdb, "gdb"));
            if (auto q = keys.find("qmp"); q != keys.end())
                vm.qmp = TRY(scalar<std::string>(origin, q->second, "qmp"));
            if (!is_valid_entry_name(vm.name)) {
                return bad(origin, name.located(),
                           "VM name '" + vm.name + "' is not usable as a file name");
            }
            if (!names.insert(vm.name).second) {
                return bad(origin, name.located(), "VM name '" + vm.name + "' is used twice");
            }
            if (auto e = gdb::Endpoint::parse(vm.gdb); !e) {
                return bad(origin, gdb.located(), e.error().message());
            }
            c.vms.push_back(std::move(vm));
        }
    }
    TRY(parse_nodes(origin, top, c));
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
