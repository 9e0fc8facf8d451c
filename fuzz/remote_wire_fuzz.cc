// Fuzzes what a mount and `cloudvmi serve` read from each other (remote/wire.h): the byte
// stream cut into frames, each frame's CBOR, and the fields both sides take from messages
// (node attributes, callers, the hello exchange). The other host is not trusted.
//
// Invariants: errors are EPROTO (EPROTONOSUPPORT for a version); a decoded message is a map
// that encodes and decodes back to itself; decoded attributes name a real file type.
#include <sys/stat.h>

#include "fs/remote_attr.h"
#include "fuzz/fuzz_check.h"
#include "remote/wire.h"

using namespace cloudvmi;
using namespace cloudvmi::remote;

FUZZ_QUIET_LOGS()

namespace {

void check_message(const Message& m) {
    FUZZ_CHECK(m.is_object());
    auto again = encode_frame(m);
    FrameReader reader;
    reader.feed(again);
    auto back = reader.next();
    // Bytes, not values: a NaN is never equal to itself.
    FUZZ_CHECK(back && back->has_value() && encode_frame(**back) == again);

    if (has_field(m, "attr")) {
        auto attr = fs::decode_remote_attr(m["attr"]);
        if (attr) {
            FUZZ_CHECK(attr->attr.st.st_size >= 0);
            FUZZ_CHECK((attr->attr.st.st_mode & S_IFMT) != 0);
            FUZZ_CHECK(attr->attr.timeout >= 0 && attr->attr.timeout <= 3600);
        } else {
            FUZZ_CHECK(attr.error().code() == EPROTO);
        }
    }
    if (has_field(m, "who")) {
        auto who = fs::decode_caller(m["who"]);
        FUZZ_CHECK(who || who.error().code() == EPROTO);
    }
    if (auto e = response_error(m)) FUZZ_CHECK(e->code() >= 1 && e->code() <= 511);
    auto hello = answer_hello(m, "n");
    FUZZ_CHECK(hello || hello.error().code() == EPROTO || hello.error().code() == EPROTONOSUPPORT);
    auto greeting = check_greeting(m);
    FUZZ_CHECK(greeting || greeting.error().code() > 0);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    // The first byte sets how the stream is cut, as reads from a socket would cut it.
    if (size == 0) return 0;
    size_t chunk = size_t(data[0] % 64) + 1;
    FrameReader reader;
    for (size_t off = 1; off < size; off += chunk) {
        reader.feed(std::span<const uint8_t>(data + off, std::min(chunk, size - off)));
        for (;;) {
            auto m = reader.next();
            if (!m) {
                FUZZ_CHECK(m.error().code() == EPROTO);
                return 0;
            }
            if (!m->has_value()) break;
            check_message(**m);
        }
    }
    return 0;
}
