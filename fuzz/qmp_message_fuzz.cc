// QMP lines from a QEMU that may be hostile: parse_qmp_message must return a value or an
// EPROTO error, never crash, hang or accept a run state it cannot vouch for.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "fuzz/fuzz_check.h"
#include "redirector/guest/qmp_message.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view line(reinterpret_cast<const char*>(data), size);
    auto m = cloudvmi::parse_qmp_message(line);
    if (!m) {
        FUZZ_CHECK(m.error().code() == EPROTO);
        return 0;
    }
    if (m->has_run_state) {
        FUZZ_CHECK(m->kind == cloudvmi::QmpMessage::Kind::kReturn);
        FUZZ_CHECK(!m->run_state.status.empty() && m->run_state.status.size() <= 64);
    }
    return 0;
}
