#include "fs/change_gate.h"

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>

#include "common/digest.h"
#include "common/log.h"
#include "common/paths.h"
#include "common/random.h"
#include "common/strings.h"

namespace cloudvmi::fs {

namespace {

using Json = nlohmann::json;

policy::Request to_request(const ChangeScope& scope, const Caller& caller, policy::Operation op,
                           const std::string& path) {
    policy::Request r;
    r.node = scope.node;
    r.vm = scope.vm;
    r.op = op;
    r.path = path;
    r.caller = policy::Caller{caller.uid, caller.gid, caller.groups};
    return r;
}

policy::Request to_request(const ChangeScope& scope, const Caller& caller, const ChangeAsk& ask,
                           const std::string& path) {
    policy::Request r = to_request(scope, caller, ask.op, path);
    r.value = ask.value;
    r.offset = ask.offset;
    r.size = ask.size;
    r.signal = ask.signal;
    r.target_name = ask.target_name;
    r.target_uid = ask.target_uid;
    return r;
}

std::string now_text() {
    auto now = std::chrono::system_clock::now();
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()) % 1000;
    std::time_t secs = std::chrono::system_clock::to_time_t(now);
    std::tm tm{};
    ::gmtime_r(&secs, &tm);
    char buf[40];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    return strformat("%s.%03dZ", buf, static_cast<int>(ms.count()));
}

// The caller's command, as its host shows it (it may be gone already).
std::string command_of(const Caller& caller) {
    if (!caller.host.empty()) return caller.comm;  // its pid is another host's
    return process_name(caller.pid);
}

// The fields an intent and its outcome share (time and phase come first in each line).
Json change_fields(const ChangeScope& scope, const Caller& caller, const ChangeAsk& ask,
                   const policy::Decision& d) {
    std::span<const uint8_t> data = ask.data;
    if (data.empty() && !ask.value.empty()) {
        data = std::span(reinterpret_cast<const uint8_t*>(ask.value.data()), ask.value.size());
    }
    Json j = {{"uid", caller.uid},
              {"gid", caller.gid},
              {"pid", caller.pid},
              {"comm", command_of(caller)},
              {"node", scope.node},
              {"vm", scope.vm},
              {"op", std::string(policy::operation_name(ask.op))},
              {"path", ask.path}};
    if (!caller.host.empty()) j["host"] = caller.host;
    if (!ask.to.empty()) j["to"] = ask.to;
    if (ask.op == policy::Operation::kWrite) j["offset"] = ask.offset;
    j["size"] = data.size();
    j["sha256"] = sha256_hex(data);
    if (ask.op == policy::Operation::kKill) {
        j["signal"] = ask.signal;
        j["target_name"] = ask.target_name;
        if (ask.target_uid) j["target_uid"] = *ask.target_uid;
    }
    j["decision"] = d.allowed ? "allow" : "deny";
    j["rule"] = d.rule;
    j["reason"] = d.reason;
    return j;
}

// `fields` after the leading ones, as one JSON line.
std::string audit_line(const std::string& id, const char* phase, const Json& fields) {
    // Ordered: time, id and phase lead every line (the fields that follow are sorted).
    nlohmann::ordered_json line = {{"time", now_text()}, {"id", id}, {"phase", phase}};
    for (const auto& [key, value] : fields.items())
        line[key] = value;
    return line.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string new_id() {
    return strformat("%016llx", static_cast<unsigned long long>(random_u64()));
}

}  // namespace

ErrorOr<ChangeGate::Ticket> ChangeGate::admit(const ChangeScope& scope, const Caller& caller,
                                              const ChangeAsk& ask) {
    auto policy = policies_.current();
    auto now = std::chrono::steady_clock::now();
    // A rename is decided at both ends: both must be allowed. The destination is only
    // explained, so that one rename counts once against a rate limit.
    policy::Decision d;
    if (!ask.to.empty()) d = policy->explain(to_request(scope, caller, ask, ask.to));
    if (ask.to.empty() || d.allowed)
        d = policy->decide(to_request(scope, caller, ask, ask.path), now);
    Ticket t{new_id(), ""};
    Json fields = change_fields(scope, caller, ask, d);
    if (!d.allowed) {
        if (audit_) {
            if (auto w = audit_->append(audit_line(t.id, "denied", fields), false); !w)
                LOG_WARN("audit: %s", w.error().describe().c_str());
        }
        return make_error(d.error ? d.error : EACCES,
                          strformat("%s %s: denied by policy rule %s (%s)",
                                    std::string(policy::operation_name(ask.op)).c_str(),
                                    ask.path.c_str(), d.rule.c_str(), d.reason.c_str()));
    }
    t.line_prefix = fields.dump(-1, ' ', false, Json::error_handler_t::replace);
    if (audit_) {
        TRY_CTX(audit_->append(audit_line(t.id, "intent", fields), true),
                "the change was not made: its intent could not be recorded");
    }
    return t;
}

void ChangeGate::settle(const Ticket& ticket, const Error* error) {
    if (!audit_) return;
    Json fields = Json::parse(ticket.line_prefix, nullptr, false);
    if (fields.is_discarded()) fields = Json::object();
    if (error) {
        fields["result"] = "error";
        fields["errno"] = error->code();
        fields["error"] = error->describe();
    } else {
        fields["result"] = "ok";
    }
    if (auto w = audit_->append(audit_line(ticket.id, "outcome", fields), false); !w)
        LOG_WARN("audit: %s", w.error().describe().c_str());
}

ErrorOr<void> ChangeGate::check_writable(const ChangeScope& scope, const Caller& caller,
                                         const std::string& path) {
    auto policy = policies_.current();
    if (policy->may_allow(to_request(scope, caller, policy::Operation::kWrite, path))) return {};
    // Decided again for the record: the rule and the reason of the refusal.
    ChangeAsk ask;
    ask.op = policy::Operation::kWrite;
    ask.path = path;
    TRY(admit(scope, caller, ask));
    return make_error(EACCES, "write " + path + ": no write can be allowed");
}

ErrorOr<void> ChangeGate::check_read(const ChangeScope& scope, const Caller& caller,
                                     const std::string& path) {
    auto policy = policies_.current();
    policy::Decision d = policy->decide(to_request(scope, caller, policy::Operation::kRead, path),
                                        std::chrono::steady_clock::now());
    if (d.audit && audit_) {
        Json fields = {{"uid", caller.uid},
                       {"gid", caller.gid},
                       {"pid", caller.pid},
                       {"comm", command_of(caller)},
                       {"node", scope.node},
                       {"vm", scope.vm},
                       {"op", "read"},
                       {"path", path},
                       {"decision", d.allowed ? "allow" : "deny"},
                       {"rule", d.rule},
                       {"reason", d.reason}};
        if (!caller.host.empty()) fields["host"] = caller.host;
        if (auto w = audit_->append(audit_line(new_id(), "read", fields), false); !w)
            LOG_WARN("audit: %s", w.error().describe().c_str());
    }
    if (!d.allowed) {
        return make_error(d.error ? d.error : EACCES,
                          strformat("read %s: denied by policy rule %s (%s)", path.c_str(),
                                    d.rule.c_str(), d.reason.c_str()));
    }
    return {};
}

}  // namespace cloudvmi::fs
