// Fuzzes what is parsed out of the stub's replies (redirector/gdb/rsp_codec.h,
// gdb_client.h): stop replies ('S', 'T', 'W', 'X'), thread ids, "Exx" errors, and the hex
// fields the client decodes (registers, memory, monitor output).
//
// Input: one decoded reply payload.
#include <string>

#include "common/strings.h"
#include "fuzz/fuzz_check.h"
#include "redirector/gdb/gdb_client.h"
#include "redirector/gdb/rsp_codec.h"

using namespace cloudvmi;
using namespace cloudvmi::gdb;

FUZZ_QUIET_LOGS()

namespace {

void check_thread_round_trip(const ThreadId& id) {
    // What we print for a thread id parses back to it (the client sends what it parsed).
    auto mp = ThreadId::parse(id.to_string(true));
    FUZZ_CHECK(mp.has_value());
    FUZZ_CHECK(mp->tid == id.tid);
    if (id.pid != -1) FUZZ_CHECK(mp->pid == id.pid);
    auto plain = ThreadId::parse(id.to_string(false));
    FUZZ_CHECK(plain.has_value());
    FUZZ_CHECK(plain->tid == id.tid && plain->pid == -1);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::string_view p = fuzz::as_text(data, size);

    if (auto stop = parse_stop_reply(p)) {
        FUZZ_CHECK(p[0] == 'S' || p[0] == 'T' || p[0] == 'W' || p[0] == 'X');
        if (p[0] == 'S' || p[0] == 'T') {
            FUZZ_CHECK(stop->kind == StopReply::Kind::kSignal);
            FUZZ_CHECK(stop->signal >= 0 && stop->signal <= 0xff);
        }
        if (stop->thread) check_thread_round_trip(*stop->thread);
    }
    if (auto id = ThreadId::parse(p)) check_thread_round_trip(*id);

    if (is_error_reply(p)) FUZZ_CHECK(p.size() == 3);
    int err = stub_error_to_errno(p);
    FUZZ_CHECK(err > 0 && err < 4096);

    if (auto bytes = hex_decode(p)) {
        FUZZ_CHECK(bytes->size() * 2 == p.size());
        std::string again = hex_encode(*bytes);
        FUZZ_CHECK(again.size() == p.size());
        for (size_t i = 0; i < p.size(); ++i)
            FUZZ_CHECK(again[i] == (p[i] >= 'A' && p[i] <= 'F' ? p[i] - 'A' + 'a' : p[i]));
    }
    if (auto v = parse_hex_u64(p)) FUZZ_CHECK(p.size() <= 16);
    (void)parse_u64(p);
    std::string shown = printable(p);
    for (char c : shown)
        FUZZ_CHECK(c >= 0x20 && c < 0x7f);
    size_t parts = 0;
    for (auto part : split(p, ';'))
        parts += part.size() + 1;
    FUZZ_CHECK(parts == p.size() + 1);
    return 0;
}
