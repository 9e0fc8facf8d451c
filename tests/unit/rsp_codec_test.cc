// redirector/gdb/rsp_codec.h: framing, checksums, escapes, RLE, the incremental decoder,
// thread ids and stop replies, on packets recorded from QEMU 7.2's gdbstub.
#include "redirector/gdb/rsp_codec.h"

#include <catch2/catch.hpp>

using namespace cloudvmi::gdb;
using Kind = WireEvent::Kind;

namespace {

// Recorded from QEMU 7.2 (checksums verified independently).
const std::string kStopPacket = "$T02thread:p01.01;#03";
const std::string kSupportedReply =
    "$PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+#92";
const std::string kStopNotification = "%Stop:T05thread:p01.01;#e6";

std::vector<WireEvent> decode_all(std::string_view bytes, size_t max = 1 << 20) {
    PacketDecoder d(max);
    std::vector<WireEvent> out;
    d.feed(bytes, out);
    return out;
}

std::string describe(const std::vector<WireEvent>& events) {
    std::string s;
    for (const auto& e : events) {
        s += std::to_string(static_cast<int>(e.kind)) + ":" + e.payload + "|";
    }
    return s;
}

}  // namespace

TEST_CASE("checksum is the byte sum modulo 256", "[rsp]") {
    CHECK(checksum("") == 0);
    CHECK(checksum("OK") == 0x9a);
    CHECK(checksum("T02thread:p01.01;") == 0x03);
    CHECK(checksum("PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+") == 0x92);
    CHECK(checksum(std::string(256, '\x01')) == 0);
    CHECK(checksum(std::string_view("\xff\x02", 2)) == 0x01);
    CHECK(checksum(std::string_view("\x80\x80\x80", 3)) == 0x80);
}

TEST_CASE("escape_payload escapes exactly $ # } and *", "[rsp]") {
    CHECK(escape_payload("") == "");
    CHECK(escape_payload("plain+-%text") == "plain+-%text");
    CHECK(escape_payload("$") == "}\x04");
    CHECK(escape_payload("#") == "}\x03");
    CHECK(escape_payload("}") == "}]");
    CHECK(escape_payload("*") == "}\x0a");
    CHECK(escape_payload("a$b#c}d*e") ==
          "a}\x04"
          "b}\x03"
          "c}]d}\x0a"
          "e");
    std::string binary = {'\0', '\x03', '\x7f', '\xff'};
    CHECK(escape_payload(binary) == binary);
}

TEST_CASE("encode_packet frames the escaped payload with its checksum", "[rsp]") {
    CHECK(encode_packet("") == "$#00");
    CHECK(encode_packet("OK") == "$OK#9a");
    CHECK(encode_packet("T02thread:p01.01;") == kStopPacket);
    CHECK(encode_packet("PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+") ==
          kSupportedReply);
    // The checksum covers the escaped bytes as sent: 'a' + '}' + 0x03 = 0xe1.
    CHECK(encode_packet("a#") == "$a}\x03#e1");
}

TEST_CASE("encode_packet keeps NUL bytes of the payload", "[rsp]") {
    // Found by fuzz/rsp_decoder_fuzz: the body was formatted with %s, which stopped at the
    // first NUL while the checksum still covered the whole body.
    CHECK(encode_packet(std::string("a\0b", 3)) == std::string("$a\0b#c3", 7));
    std::vector<WireEvent> out;
    PacketDecoder d;
    d.feed(encode_packet(std::string("\0\0x", 3)), out);
    REQUIRE(out.size() == 1);
    CHECK(out[0].kind == Kind::kPacket);
    CHECK(out[0].payload == std::string("\0\0x", 3));
}

TEST_CASE("expand_payload undoes escapes", "[rsp]") {
    CHECK(expand_payload("", 100) == std::optional<std::string>(""));
    CHECK(expand_payload("abc", 100) == std::optional<std::string>("abc"));
    CHECK(expand_payload("}]", 100) == std::optional<std::string>("}"));
    CHECK(expand_payload("}\x03}\x04", 100) == std::optional<std::string>("#$"));
    // An escaped '*' is data, not a run-length marker.
    CHECK(expand_payload("a}\x0a", 100) == std::optional<std::string>("a*"));
    CHECK_FALSE(expand_payload("}", 100).has_value());
    CHECK_FALSE(expand_payload("ab}", 100).has_value());
}

TEST_CASE("expand_payload decodes run-length encoding", "[rsp]") {
    // Count character n repeats the previous byte n - 29 more times: ' ' (32) gives 3.
    CHECK(expand_payload("0* ", 100) == std::optional<std::string>("0000"));
    CHECK(expand_payload("x*!", 100) == std::optional<std::string>("xxxxx"));
    CHECK(expand_payload("ab*\"c", 100) == std::optional<std::string>("abbbbbbc"));
    CHECK(expand_payload("a*~", 200) == std::optional<std::string>(std::string(98, 'a')));
    // The byte repeated is the decoded one, even when it was escaped.
    CHECK(expand_payload("}]* ", 100) == std::optional<std::string>("}}}}"));
    // Runs can follow runs.
    CHECK(expand_payload("0* 1* ", 100) == std::optional<std::string>("00001111"));
    // A 'g' reply full of zeros, as QEMU sends it.
    CHECK(expand_payload("0*}", 100) == std::optional<std::string>(std::string(97, '0')));

    SECTION("malformed runs") {
        CHECK_FALSE(expand_payload("*", 100).has_value());       // nothing to repeat
        CHECK_FALSE(expand_payload("* ", 100).has_value());      // nothing to repeat
        CHECK_FALSE(expand_payload("a*", 100).has_value());      // missing count
        CHECK_FALSE(expand_payload("a*\x1f", 100).has_value());  // below range
        CHECK_FALSE(expand_payload("a*\x1d", 100).has_value());  // zero repeats
        CHECK_FALSE(expand_payload("a*\x7f", 100).has_value());  // above range
        CHECK_FALSE(expand_payload("a*\xff", 100).has_value());  // not 7-bit
    }
}

TEST_CASE("expand_payload enforces max_size on the expanded data", "[rsp]") {
    CHECK(expand_payload("abc", 3) == std::optional<std::string>("abc"));
    CHECK_FALSE(expand_payload("abcd", 3).has_value());
    CHECK(expand_payload("0* ", 4) == std::optional<std::string>("0000"));
    CHECK_FALSE(expand_payload("0* ", 3).has_value());
    CHECK_FALSE(expand_payload("a*~", 97).has_value());
    CHECK(expand_payload("a*~", 98).has_value());
    CHECK_FALSE(expand_payload("x", 0).has_value());
}

TEST_CASE("PacketDecoder decodes single events", "[rsp]") {
    SECTION("a recorded packet") {
        auto ev = decode_all(kStopPacket);
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kPacket);
        CHECK(ev[0].payload == "T02thread:p01.01;");
    }
    SECTION("the recorded qSupported reply, preceded by its ack") {
        auto ev = decode_all("+" + kSupportedReply);
        REQUIRE(ev.size() == 2);
        CHECK(ev[0].kind == Kind::kAck);
        CHECK(ev[1].kind == Kind::kPacket);
        CHECK(ev[1].payload ==
              "PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+");
    }
    SECTION("nack, interrupt and garbage") {
        auto ev = decode_all("-\x03z");
        REQUIRE(ev.size() == 3);
        CHECK(ev[0].kind == Kind::kNack);
        CHECK(ev[1].kind == Kind::kInterrupt);
        CHECK(ev[2].kind == Kind::kGarbage);
        CHECK(ev[2].payload == "z");
    }
    SECTION("an empty packet") {
        auto ev = decode_all("$#00");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kPacket);
        CHECK(ev[0].payload.empty());
    }
    SECTION("an uppercase checksum") {
        auto ev = decode_all("$OK#9A");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kPacket);
        CHECK(ev[0].payload == "OK");
    }
    SECTION("a notification") {
        auto ev = decode_all(kStopNotification);
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kNotification);
        CHECK(ev[0].payload == "Stop:T05thread:p01.01;");
    }
    SECTION("a run-length encoded packet") {
        // checksum("0* ") = 0x30 + 0x2a + 0x20 = 0x7a
        auto ev = decode_all("$0* #7a");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kPacket);
        CHECK(ev[0].payload == "0000");
    }
    SECTION("escapes in the body") {
        auto ev = decode_all(encode_packet("x$y#z}w*"));
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kPacket);
        CHECK(ev[0].payload == "x$y#z}w*");
    }
}

TEST_CASE("PacketDecoder reports bad packets", "[rsp]") {
    SECTION("checksum mismatch") {
        auto ev = decode_all("$OK#9b");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kBadPacket);
    }
    SECTION("non-hex checksum") {
        auto ev = decode_all("$OK#zz");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kBadPacket);
    }
    SECTION("good checksum over a malformed body") {
        // "a*" + 0x1f: a run count below the valid range; sum = 0x61 + 0x2a + 0x1f = 0xaa
        auto ev = decode_all("$a*\x1f#aa");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kBadPacket);
    }
    SECTION("dangling escape") {
        // sum("a}") = 0x61 + 0x7d = 0xde
        auto ev = decode_all("$a}#de");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kBadPacket);
    }
    SECTION("bad notification") {
        auto ev = decode_all("%Stop:T05thread:p01.01;#00");
        REQUIRE(ev.size() == 1);
        CHECK(ev[0].kind == Kind::kBadPacket);
    }
    SECTION("the decoder recovers after a bad packet") {
        auto ev = decode_all("$OK#00$OK#9a");
        REQUIRE(ev.size() == 2);
        CHECK(ev[0].kind == Kind::kBadPacket);
        CHECK(ev[1].kind == Kind::kPacket);
        CHECK(ev[1].payload == "OK");
    }
}

TEST_CASE("PacketDecoder enforces the maximum packet size", "[rsp]") {
    const std::string eight = encode_packet("12345678");
    const std::string nine = encode_packet("123456789");

    auto ok = decode_all(eight, 8);
    REQUIRE(ok.size() == 1);
    CHECK(ok[0].kind == Kind::kPacket);
    CHECK(ok[0].payload == "12345678");

    auto big = decode_all(nine + eight, 8);
    REQUIRE(big.size() == 2);
    CHECK(big[0].kind == Kind::kBadPacket);
    CHECK(big[0].payload.size() <= 64);
    CHECK(big[1].kind == Kind::kPacket);  // the next packet is unaffected
    CHECK(big[1].payload == "12345678");

    // The wire form fits but its run-length expansion does not.
    auto rle = decode_all("$0* #7a", 3);
    REQUIRE(rle.size() == 1);
    CHECK(rle[0].kind == Kind::kBadPacket);
}

TEST_CASE("PacketDecoder gives the same events however the stream is split", "[rsp]") {
    const std::string stream = "+" + kStopPacket + "-" + kSupportedReply + "\x03" + "garbage" +
                               kStopNotification + "$OK#00" + encode_packet("x$y#}*z") + "$0* #7a" +
                               "+";
    const auto whole = decode_all(stream);
    REQUIRE(whole.size() == 17);  // +, packet, -, packet, ^C, 7 garbage, notif, bad, 2 packets, +
    CHECK(whole[0].kind == Kind::kAck);
    CHECK(whole[1].kind == Kind::kPacket);
    CHECK(whole[2].kind == Kind::kNack);
    CHECK(whole[3].kind == Kind::kPacket);
    CHECK(whole[4].kind == Kind::kInterrupt);
    CHECK(whole[5].kind == Kind::kGarbage);
    CHECK(whole[12].kind == Kind::kNotification);
    CHECK(whole[13].kind == Kind::kBadPacket);
    CHECK(whole[14].payload == "x$y#}*z");
    CHECK(whole[15].payload == "0000");
    CHECK(whole[16].kind == Kind::kAck);

    const std::string expected = describe(whole);
    for (size_t cut = 0; cut <= stream.size(); ++cut) {
        PacketDecoder d;
        std::vector<WireEvent> out;
        d.feed(std::string_view(stream).substr(0, cut), out);
        d.feed(std::string_view(stream).substr(cut), out);
        INFO("split at " << cut);
        CHECK(describe(out) == expected);
        CHECK_FALSE(d.mid_packet());
    }
    for (size_t a = 0; a < stream.size(); a += 7) {
        for (size_t b = a; b <= stream.size(); b += 5) {
            PacketDecoder d;
            std::vector<WireEvent> out;
            d.feed(std::string_view(stream).substr(0, a), out);
            d.feed(std::string_view(stream).substr(a, b - a), out);
            d.feed(std::string_view(stream).substr(b), out);
            INFO("split at " << a << " and " << b);
            CHECK(describe(out) == expected);
        }
    }
    PacketDecoder d;
    std::vector<WireEvent> out;
    for (char c : stream)
        d.feed(std::string_view(&c, 1), out);
    CHECK(describe(out) == expected);
}

TEST_CASE("PacketDecoder tracks and resets a packet in progress", "[rsp]") {
    PacketDecoder d;
    std::vector<WireEvent> out;
    CHECK_FALSE(d.mid_packet());
    d.feed("$O", out);
    CHECK(d.mid_packet());
    d.feed("K#", out);
    CHECK(d.mid_packet());
    d.feed("9", out);
    CHECK(d.mid_packet());
    CHECK(out.empty());
    d.feed("a", out);
    CHECK_FALSE(d.mid_packet());
    REQUIRE(out.size() == 1);
    CHECK(out[0].payload == "OK");

    out.clear();
    d.feed("$partial", out);
    CHECK(d.mid_packet());
    d.reset();
    CHECK_FALSE(d.mid_packet());
    d.feed("$OK#9a", out);
    REQUIRE(out.size() == 1);
    CHECK(out[0].kind == Kind::kPacket);
    CHECK(out[0].payload == "OK");  // nothing of the abandoned packet leaks in
}

TEST_CASE("ThreadId::parse", "[rsp]") {
    using T = ThreadId;
    CHECK(T::parse("p01.02") == std::optional<T>(T{1, 2}));
    CHECK(T::parse("p1.-1") == std::optional<T>(T{1, -1}));
    CHECK(T::parse("pa.1f") == std::optional<T>(T{10, 31}));
    CHECK(T::parse("p1") == std::optional<T>(T{1, -1}));  // all threads of process 1
    CHECK(T::parse("-1") == std::optional<T>(T{-1, -1}));
    CHECK(T::parse("0") == std::optional<T>(T{-1, 0}));
    CHECK(T::parse("01") == std::optional<T>(T{-1, 1}));
    CHECK(T::parse("7fffffffffffffff") == std::optional<T>(T{-1, 0x7fffffffffffffffLL}));

    CHECK_FALSE(T::parse("").has_value());
    CHECK_FALSE(T::parse("p").has_value());
    CHECK_FALSE(T::parse("p.1").has_value());
    CHECK_FALSE(T::parse("p1.").has_value());
    CHECK_FALSE(T::parse("px.1").has_value());
    CHECK_FALSE(T::parse("p1.x").has_value());
    CHECK_FALSE(T::parse("-2").has_value());
    CHECK_FALSE(T::parse("-").has_value());
    CHECK_FALSE(T::parse("8000000000000000").has_value());
    CHECK_FALSE(T::parse("1.2").has_value());
}

TEST_CASE("ThreadId::to_string", "[rsp]") {
    CHECK(ThreadId{1, 2}.to_string(true) == "p1.2");
    CHECK(ThreadId{1, 2}.to_string(false) == "2");
    CHECK(ThreadId{1, -1}.to_string(true) == "p1.-1");
    CHECK(ThreadId{0x1a, 0x2b}.to_string(true) == "p1a.2b");
    CHECK(ThreadId{-1, 0}.to_string(true) == "0");
    CHECK(ThreadId{-1, 0}.to_string(false) == "0");
    CHECK(ThreadId{-1, -1}.to_string(false) == "-1");
    CHECK(ThreadId{-1, 3}.to_string(true) == "3");

    for (ThreadId id :
         {ThreadId{1, 2}, ThreadId{1, -1}, ThreadId{0x10, 0}, ThreadId{-1, 5}, ThreadId{-1, -1}}) {
        INFO(id.to_string(true));
        CHECK(ThreadId::parse(id.to_string(true)) == std::optional<ThreadId>(id));
    }
}

TEST_CASE("parse_stop_reply on recorded and documented replies", "[rsp]") {
    SECTION("T with a multiprocess thread") {
        auto r = parse_stop_reply("T05thread:p01.02;");
        REQUIRE(r.has_value());
        CHECK(r->kind == StopReply::Kind::kSignal);
        CHECK(r->signal == 5);
        CHECK(r->thread == std::optional<ThreadId>(ThreadId{1, 2}));
        CHECK_FALSE(r->swbreak);
        CHECK_FALSE(r->hwbreak);
        CHECK_FALSE(r->watch_address.has_value());
    }
    SECTION("recorded SIGINT stop") {
        auto r = parse_stop_reply("T02thread:p01.01;");
        REQUIRE(r.has_value());
        CHECK(r->signal == 2);
        CHECK(r->thread == std::optional<ThreadId>(ThreadId{1, 1}));
    }
    SECTION("S") {
        auto r = parse_stop_reply("S02");
        REQUIRE(r.has_value());
        CHECK(r->kind == StopReply::Kind::kSignal);
        CHECK(r->signal == 2);
        CHECK_FALSE(r->thread.has_value());
    }
    SECTION("W") {
        auto r = parse_stop_reply("W00");
        REQUIRE(r.has_value());
        CHECK(r->kind == StopReply::Kind::kExited);
        CHECK(r->signal == 0);
        auto r2 = parse_stop_reply("W1f;process:2");
        REQUIRE(r2.has_value());
        CHECK(r2->kind == StopReply::Kind::kExited);
        CHECK(r2->signal == 0x1f);
    }
    SECTION("X with a process") {
        auto r = parse_stop_reply("X09;process:1");
        REQUIRE(r.has_value());
        CHECK(r->kind == StopReply::Kind::kTerminated);
        CHECK(r->signal == 9);
    }
    SECTION("T with a plain thread id and hwbreak") {
        auto r = parse_stop_reply("T05thread:01;hwbreak:;");
        REQUIRE(r.has_value());
        CHECK(r->signal == 5);
        CHECK(r->thread == std::optional<ThreadId>(ThreadId{-1, 1}));
        CHECK(r->hwbreak);
        CHECK_FALSE(r->swbreak);
    }
    SECTION("swbreak before the thread") {
        auto r = parse_stop_reply("T05swbreak:;thread:p2.3;");
        REQUIRE(r.has_value());
        CHECK(r->swbreak);
        CHECK(r->thread == std::optional<ThreadId>(ThreadId{2, 3}));
    }
    SECTION("watchpoints") {
        auto w = parse_stop_reply("T05watch:7ffe1000;thread:p1.1;");
        REQUIRE(w.has_value());
        CHECK(w->watch_address == std::optional<uint64_t>(0x7ffe1000));
        auto a = parse_stop_reply("T05awatch:ffffffffb1600080;");
        REQUIRE(a.has_value());
        CHECK(a->watch_address == std::optional<uint64_t>(0xffffffffb1600080ULL));
        auto rw = parse_stop_reply("T05rwatch:10;");
        REQUIRE(rw.has_value());
        CHECK(rw->watch_address == std::optional<uint64_t>(0x10));
    }
    SECTION("register values and unknown keys are ignored") {
        auto r = parse_stop_reply(
            "T0506:0000000000000000;07:e03f40b2ffffffff;10:eb9245b1ffffffff;thread:p01.01;"
            "core:0;");
        REQUIRE(r.has_value());
        CHECK(r->signal == 5);
        CHECK(r->thread == std::optional<ThreadId>(ThreadId{1, 1}));
    }
    SECTION("T without fields") {
        auto r = parse_stop_reply("T05");
        REQUIRE(r.has_value());
        CHECK(r->signal == 5);
        CHECK_FALSE(r->thread.has_value());
    }
}

TEST_CASE("parse_stop_reply rejects what is not a stop reply", "[rsp]") {
    for (const char* p :
         {"", "OK", "E01", "S0", "T0", "Tzz", "S0g", "Wxx", "W;process:1", "X;process:1",
          "O48656c6c6f", "T05thread:zz;", "T05thread:;", "qSupported"}) {
        INFO(p);
        CHECK_FALSE(parse_stop_reply(p).has_value());
    }
}

TEST_CASE("is_error_reply", "[rsp]") {
    CHECK(is_error_reply("E01"));
    CHECK(is_error_reply("E0a"));
    CHECK(is_error_reply("EFF"));
    CHECK_FALSE(is_error_reply("E1"));
    CHECK_FALSE(is_error_reply("E012"));
    CHECK_FALSE(is_error_reply("E0g"));
    CHECK_FALSE(is_error_reply("e01"));
    CHECK_FALSE(is_error_reply("OK"));
    CHECK_FALSE(is_error_reply(""));
    CHECK_FALSE(is_error_reply("X01"));
}
