// Fuzzes the GDB remote-protocol byte decoder (redirector/gdb/rsp_codec.h): PacketDecoder
// over a stream from the stub, cut into pieces as recv() might, and expand_payload.
//
// Input: one byte of settings (bits 0-1: packet size limit, bits 2-7: piece length), then
// the bytes the stub sent.
#include <string>
#include <vector>

#include "fuzz/fuzz_check.h"
#include "redirector/gdb/rsp_codec.h"

using namespace cloudvmi::gdb;

FUZZ_QUIET_LOGS()

namespace {

constexpr size_t kLimits[] = {16, 64, 4096, size_t{1} << 20};

std::vector<WireEvent> decode(std::string_view stream, size_t limit, size_t piece,
                              bool* mid_packet) {
    PacketDecoder d(limit);
    std::vector<WireEvent> out;
    for (size_t pos = 0; pos < stream.size(); pos += piece)
        d.feed(stream.substr(pos, piece), out);
    *mid_packet = d.mid_packet();
    d.reset();
    FUZZ_CHECK(!d.mid_packet());
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    size_t limit = kLimits[data[0] & 3];
    size_t piece = 1 + (data[0] >> 2);
    std::string_view stream = cloudvmi::fuzz::as_text(data + 1, size - 1);

    // However the stream is cut, the same events come out.
    bool mid_whole = false, mid_pieces = false;
    auto whole = decode(stream, limit, stream.size() + 1, &mid_whole);
    auto pieces = decode(stream, limit, piece, &mid_pieces);
    FUZZ_CHECK(whole.size() == pieces.size());
    FUZZ_CHECK(mid_whole == mid_pieces);
    for (size_t i = 0; i < whole.size(); ++i) {
        FUZZ_CHECK(whole[i].kind == pieces[i].kind);
        FUZZ_CHECK(whole[i].payload == pieces[i].payload);
    }

    for (const auto& e : whole) {
        switch (e.kind) {
            case WireEvent::Kind::kPacket:
            case WireEvent::Kind::kNotification: {
                FUZZ_CHECK(e.payload.size() <= limit);
                // What we decoded, sent back by us, decodes to the same payload.
                PacketDecoder again(size_t{4} << 20);
                std::vector<WireEvent> out;
                again.feed(encode_packet(e.payload), out);
                FUZZ_CHECK(out.size() == 1 && out[0].kind == WireEvent::Kind::kPacket);
                FUZZ_CHECK(out[0].payload == e.payload);
                break;
            }
            case WireEvent::Kind::kBadPacket:
                FUZZ_CHECK(e.payload.size() <= 64);
                break;
            case WireEvent::Kind::kGarbage:
                FUZZ_CHECK(e.payload.size() == 1);
                break;
            default:
                FUZZ_CHECK(e.payload.empty());
        }
    }

    // The body decoder on its own: bounded output, and it inverts escape_payload.
    if (auto expanded = expand_payload(stream, limit)) FUZZ_CHECK(expanded->size() <= limit);
    auto round = expand_payload(escape_payload(stream), stream.size());
    FUZZ_CHECK(round && *round == stream);
    (void)checksum(stream);
    return 0;
}
