// One message of the QEMU Machine Protocol (one JSON object per line), decoded from a
// QEMU that may be hostile or broken: anything unexpected is an EPROTO error, never a
// crash or an unbounded allocation beyond the line itself.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"
#include "redirector/guest/vm_run_state.h"

namespace cloudvmi {

struct QmpMessage {
    enum class Kind {
        kGreeting,  // {"QMP": {...}}
        kReturn,    // {"return": ...}
        kError,     // {"error": {"class": ..., "desc": ...}}
        kEvent,     // {"event": NAME, ...}
    } kind = Kind::kReturn;
    std::string event;  // kEvent: its name ("STOP", "RESUME", ...)
    std::string error;  // kError: "class: desc"
    // kReturn of query-status: {"return": {"running": bool, "status": name}}
    bool has_run_state = false;
    VmRunState run_state;
};

// The longest line accepted from QMP; query-status, events and the greeting are far shorter.
inline constexpr size_t kQmpMaxLine = 64 * 1024;

ErrorOr<QmpMessage> parse_qmp_message(std::string_view line);

// Whether an event may mean that the run state changed.
bool qmp_event_changes_run_state(std::string_view event);

}  // namespace cloudvmi
