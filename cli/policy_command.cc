// `cloudvmi policy check|explain`: the policy file without a mount.
#include <getopt.h>

#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "common/signals.h"
#include "common/strings.h"
#include "policy/policy.h"

namespace cloudvmi::cli {

namespace {

using Json = nlohmann::json;

const char kPolicyUsage[] =
    "Usage: cloudvmi policy check FILE [--json]\n"
    "       cloudvmi policy explain FILE --node N --vm V --op OP --path P [OPTIONS]\n"
    "\n"
    "check     loads FILE as the mount would: prints the number of rules, or the first\n"
    "          error with its line and column\n"
    "explain   decides one request as the mount would and names the deciding rule\n"
    "          (rate limits are not consumed)\n"
    "\n"
    "explain options:\n"
    "  --node N, --vm V     the node and the VM\n"
    "  --op OP              read write create truncate unlink mkdir rmdir rename chmod\n"
    "                       chown symlink setxattr kill\n"
    "  --path P             the guest path (/proc/PID for kill)\n"
    "  --uid U, --gid G     the host caller (names or numbers; default 0)\n"
    "  --groups G1,G2       the caller's supplementary groups\n"
    "  --value TEXT         the data written (write), link target (symlink), mode (chmod)...\n"
    "  --offset N           where the write starts (default 0)\n"
    "  --size N             the file's size after the change (default: offset + value)\n"
    "  --signal SIG         kill: the signal (name or number)\n"
    "  --target-name NAME   kill: the target's command name\n"
    "  --target-uid U       kill: the target's uid in the guest\n"
    "  --json               one JSON object instead of text\n"
    "\n"
    "Exit status: check 0 valid, 2 invalid or unreadable; explain 0 allowed, 1 denied,\n"
    "2 usage error or invalid file. See cloudvmi-policy(5).\n";

int usage_error(const std::string& what) {
    std::fprintf(stderr, "cloudvmi policy: %s (see cloudvmi policy --help)\n", what.c_str());
    return kExitUsage;
}

int check_main(const std::string& file, bool json) {
    auto policy = policy::Policy::load_file(file, policy::NameResolver::system());
    if (!policy) {
        if (json) {
            std::printf("%s\n",
                        Json{{"file", file}, {"ok", false}, {"error", policy.error().message()}}
                            .dump()
                            .c_str());
        } else {
            std::fprintf(stderr, "cloudvmi policy: %s\n", policy.error().message().c_str());
        }
        return kExitUsage;
    }
    if (json) {
        std::printf(
            "%s\n",
            Json{{"file", file}, {"ok", true}, {"rules", (*policy)->rule_count()}}.dump().c_str());
    } else {
        std::printf("%s: OK, %zu rules\n", file.c_str(), (*policy)->rule_count());
    }
    return kExitOk;
}

std::optional<uint32_t> id_of(const std::string& s, bool user, const policy::NameResolver& names) {
    if (auto n = parse_u64(s); n && *n < 0xffffffffu) return static_cast<uint32_t>(*n);
    auto found = user ? names.user(s) : names.group(s);
    if (!found) return std::nullopt;
    return static_cast<uint32_t>(*found);
}

struct ExplainArgs {
    policy::Request request;
    bool json = false;
    bool size_given = false;
};

// Fills `out` from one option; "" or what is wrong.
std::string take_option(int opt, const std::string& v, ExplainArgs& out,
                        const policy::NameResolver& names) {
    policy::Request& q = out.request;
    switch (opt) {
        case 'n':
            q.node = v;
            break;
        case 'v':
            q.vm = v;
            break;
        case 'o': {
            auto op = policy::parse_operation(v);
            if (!op) return "unknown operation '" + v + "'";
            q.op = *op;
            break;
        }
        case 'p': {
            auto p = policy::normalize_path(v);
            if (!p) return "--path " + v + ": " + p.error().message();
            q.path = *p;
            break;
        }
        case 'u': {
            auto id = id_of(v, true, names);
            if (!id) return "no user " + v;
            q.caller.uid = *id;
            break;
        }
        case 'g': {
            auto id = id_of(v, false, names);
            if (!id) return "no group " + v;
            q.caller.gid = *id;
            break;
        }
        case 'G':
            for (auto g : split(v, ',')) {
                auto id = id_of(std::string(g), false, names);
                if (!id) return "no group " + std::string(g);
                q.caller.groups.push_back(*id);
            }
            break;
        case 'V':
            q.value = v;
            break;
        case 'O': {
            auto n = parse_u64(v);
            if (!n) return "bad --offset " + v;
            q.offset = *n;
            break;
        }
        case 'S': {
            auto n = parse_u64(v);
            if (!n) return "bad --size " + v;
            q.size = *n;
            out.size_given = true;
            break;
        }
        case 's': {
            auto sig = parse_signal(v);
            if (!sig) return "bad --signal " + v;
            q.signal = *sig;
            break;
        }
        case 'N':
            q.target_name = v;
            break;
        case 'U': {
            auto id = id_of(v, true, names);
            if (!id) return "no user " + v;
            q.target_uid = *id;
            break;
        }
        case 'j':
            out.json = true;
            break;
        default:
            return "unknown option";
    }
    return "";
}

int explain_main(int argc, char** argv, const std::string& file) {
    static const option kOptions[] = {{"node", required_argument, nullptr, 'n'},
                                      {"vm", required_argument, nullptr, 'v'},
                                      {"op", required_argument, nullptr, 'o'},
                                      {"path", required_argument, nullptr, 'p'},
                                      {"uid", required_argument, nullptr, 'u'},
                                      {"gid", required_argument, nullptr, 'g'},
                                      {"groups", required_argument, nullptr, 'G'},
                                      {"value", required_argument, nullptr, 'V'},
                                      {"offset", required_argument, nullptr, 'O'},
                                      {"size", required_argument, nullptr, 'S'},
                                      {"signal", required_argument, nullptr, 's'},
                                      {"target-name", required_argument, nullptr, 'N'},
                                      {"target-uid", required_argument, nullptr, 'U'},
                                      {"json", no_argument, nullptr, 'j'},
                                      {nullptr, 0, nullptr, 0}};
    auto names = policy::NameResolver::system();
    ExplainArgs args;
    bool op_given = false;
    optind = 1;
    int opt;
    while ((opt = getopt_long(argc, argv, "", kOptions, nullptr)) != -1) {
        if (opt == '?') return usage_error("bad option");
        if (opt == 'o') op_given = true;
        if (auto why = take_option(opt, optarg ? optarg : "", args, names); !why.empty())
            return usage_error(why);
    }
    if (optind != argc) return usage_error("unexpected argument " + std::string(argv[optind]));
    policy::Request& q = args.request;
    if (q.node.empty() || q.vm.empty() || !op_given || q.path.empty())
        return usage_error("explain needs --node, --vm, --op and --path");
    if (!args.size_given && q.op == policy::Operation::kWrite) q.size = q.offset + q.value.size();
    auto policy = policy::Policy::load_file(file, names);
    if (!policy) {
        std::fprintf(stderr, "cloudvmi policy: %s\n", policy.error().message().c_str());
        return kExitUsage;
    }
    policy::Decision d = (*policy)->explain(q);
    if (args.json) {
        std::printf("%s\n", Json{{"allowed", d.allowed},
                                 {"errno", d.allowed ? "" : std::string(strerrorname_np(d.error))},
                                 {"rule", d.rule},
                                 {"reason", d.reason},
                                 {"audit", d.audit}}
                                .dump()
                                .c_str());
    } else {
        std::printf("%s  rule %s: %s\n",
                    d.allowed ? "allow" : strformat("deny (%s)", strerrorname_np(d.error)).c_str(),
                    d.rule.c_str(), d.reason.c_str());
    }
    return d.allowed ? kExitOk : kExitGuestError;
}

}  // namespace

int policy_main(int argc, char** argv) {
    // argv[0] is "policy".
    if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
        std::fputs(kPolicyUsage, argc < 2 ? stderr : stdout);
        return argc < 2 ? kExitUsage : kExitOk;
    }
    std::string sub = argv[1];
    if (argc < 3) return usage_error(sub + " needs a FILE");
    std::string file = argv[2];
    if (sub == "check") {
        bool json = argc == 4 && !std::strcmp(argv[3], "--json");
        if (argc > 4 || (argc == 4 && !json)) return usage_error("check takes FILE [--json]");
        return check_main(file, json);
    }
    if (sub == "explain") return explain_main(argc - 2, argv + 2, file);
    return usage_error("unknown policy command '" + sub + "'");
}

}  // namespace cloudvmi::cli
