#include "redirector/guest/qmp_message.h"

#include <nlohmann/json.hpp>

namespace cloudvmi {

namespace {

using json = nlohmann::json;

ErrorOr<std::string> string_member(const json& object, const char* key) {
    auto it = object.find(key);
    if (it == object.end() || !it->is_string()) {
        return make_error(EPROTO, std::string("QMP: no string \"") + key + "\"");
    }
    return it->get<std::string>();
}

ErrorOr<QmpMessage> decode_return(const json& value) {
    QmpMessage m;
    m.kind = QmpMessage::Kind::kReturn;
    if (!value.is_object()) return m;
    auto running = value.find("running");
    auto status = value.find("status");
    if (running == value.end() && status == value.end()) return m;
    if (running == value.end() || !running->is_boolean() || status == value.end() ||
        !status->is_string()) {
        return make_error(EPROTO, "QMP: a run state without a boolean running and a status");
    }
    m.has_run_state = true;
    m.run_state.running = running->get<bool>();
    m.run_state.status = status->get<std::string>();
    if (m.run_state.status.empty() || m.run_state.status.size() > 64) {
        return make_error(EPROTO, "QMP: implausible run state name");
    }
    return m;
}

}  // namespace

ErrorOr<QmpMessage> parse_qmp_message(std::string_view line) {
    if (line.size() > kQmpMaxLine) return make_error(EPROTO, "QMP: message too long");
    // No exceptions: a malformed line is a discarded value, depth-limited by the parser's
    // own recursion only through nesting, which a line of at most kQmpMaxLine bounds.
    json message = json::parse(line, nullptr, false);
    if (message.is_discarded() || !message.is_object()) {
        return make_error(EPROTO, "QMP: not a JSON object");
    }
    QmpMessage m;
    if (message.contains("QMP")) {
        m.kind = QmpMessage::Kind::kGreeting;
        return m;
    }
    if (auto it = message.find("return"); it != message.end()) return decode_return(*it);
    if (auto it = message.find("error"); it != message.end()) {
        if (!it->is_object()) return make_error(EPROTO, "QMP: error is not an object");
        m.kind = QmpMessage::Kind::kError;
        auto cls = string_member(*it, "class");
        auto desc = string_member(*it, "desc");
        m.error = (cls ? *cls : std::string("?")) + ": " + (desc ? *desc : std::string("?"));
        return m;
    }
    if (message.contains("event")) {
        m.kind = QmpMessage::Kind::kEvent;
        m.event = TRY(string_member(message, "event"));
        return m;
    }
    return make_error(EPROTO, "QMP: neither a greeting, a return, an error nor an event");
}

bool qmp_event_changes_run_state(std::string_view event) {
    // Anything that can stop, start or end the VM; unknown events are ignored.
    for (std::string_view e :
         {"STOP", "RESUME", "SHUTDOWN", "RESET", "POWERDOWN", "SUSPEND", "WAKEUP", "GUEST_PANICKED",
          "BLOCK_IO_ERROR", "MIGRATION", "WATCHDOG", "DEBUG"}) {
        if (event == e) return true;
    }
    return false;
}

}  // namespace cloudvmi
