// The wire protocol to remote nodes (remote/wire.h), the attributes it carries
// (fs/remote_attr.h) and the link's handling of transports that fail or are no cloudvmi.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <thread>

#include "fs/filesystem.h"
#include "fs/remote_attr.h"
#include "remote/remote_link.h"
#include "remote/wire.h"

using namespace cloudvmi;
using namespace cloudvmi::remote;

namespace {

std::vector<uint8_t> raw_frame(uint32_t length, std::vector<uint8_t> payload) {
    std::vector<uint8_t> out = {uint8_t(length >> 24), uint8_t(length >> 16), uint8_t(length >> 8),
                                uint8_t(length)};
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
}

ErrorOr<std::optional<Message>> read_one(const std::vector<uint8_t>& bytes) {
    FrameReader reader;
    reader.feed(bytes);
    return reader.next();
}

}  // namespace

TEST_CASE("wire: frames survive any cutting of the stream, in order", "[remote]") {
    std::vector<Message> sent = {
        hello_request("mounthost"),
        Message{{"id", 7}, {"data", Message::binary({0, 1, 2, 255})}, {"eof", true}},
        Message{{"id", 8},
                {"entries", Message::array({Message{{"name", "proc"}, {"type", 040000}}})}},
    };
    std::vector<uint8_t> stream;
    for (const auto& m : sent) {
        auto f = encode_frame(m);
        stream.insert(stream.end(), f.begin(), f.end());
    }
    for (size_t chunk : {size_t(1), size_t(3), size_t(64), stream.size()}) {
        FrameReader reader;
        std::vector<Message> got;
        for (size_t off = 0; off < stream.size(); off += chunk) {
            reader.feed(std::span<const uint8_t>(stream).subspan(
                off, std::min(chunk, stream.size() - off)));
            for (;;) {
                auto m = reader.next();
                REQUIRE(m);
                if (!m->has_value()) break;
                got.push_back(**m);
            }
        }
        CHECK(got == sent);
        CHECK(reader.buffered() == 0);
    }
}

TEST_CASE("wire: malformed frames are EPROTO and say what is wrong", "[remote]") {
    struct Row {
        const char* what;
        std::vector<uint8_t> bytes;
        const char* says;
    };
    std::vector<Row> rows = {
        {"empty frame", raw_frame(0, {}), "frame of 0 bytes"},
        {"oversized", raw_frame(1u << 30, {}), "not a cloudvmi peer"},
        {"an HTTP answer", {'H', 'T', 'T', 'P', '/', '1', '.', '1'}, "not a cloudvmi peer"},
        {"not a map", raw_frame(1, {0x05}), "not a map"},
        {"truncated CBOR", raw_frame(2, {0xa1, 0x61}), "not a CBOR value"},
        {"an array of 2^60 elements", raw_frame(9, {0x9b, 0x10, 0, 0, 0, 0, 0, 0, 0}),
         "not a CBOR value"},
        {"a map of 2^60 pairs", raw_frame(9, {0xbb, 0x10, 0, 0, 0, 0, 0, 0, 0}),
         "not a CBOR value"},
        {"nested too deep", raw_frame(41, std::vector<uint8_t>(40, 0x81)), "nested deeper"},
    };
    rows.back().bytes.push_back(0x00);
    for (const auto& row : rows) {
        INFO(row.what);
        auto m = read_one(row.bytes);
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EPROTO);
        CHECK_THAT(m.error().message(), Catch::Contains(row.says));
    }
}

TEST_CASE("wire: fields are typed, errors carry a valid errno", "[remote]") {
    Message m{{"id", 3}, {"path", "vm/proc"}, {"neg", -4}, {"flag", true}};
    CHECK(*field_u64(m, "id") == 3);
    CHECK(*field_string(m, "path") == "vm/proc");
    CHECK(*field_i64(m, "neg") == -4);
    CHECK_FALSE(field_u64(m, "neg"));
    CHECK_FALSE(field_string(m, "id"));
    CHECK_FALSE(field_bytes(m, "path"));
    auto missing = field_u64(m, "size");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code() == EPROTO);
    CHECK_THAT(missing.error().message(), Catch::Contains("'size' is missing"));

    CHECK_FALSE(response_error(m));
    // The errno passes unchanged, and so does what kind of answer it was.
    auto enoent = response_error(error_response(3, Error::guest(ENOENT, "no such file")));
    REQUIRE(enoent);
    CHECK(enoent->code() == ENOENT);
    CHECK(enoent->from_guest());
    auto busy = response_error(error_response(3, Error::unavailable(EBUSY, "held")));
    CHECK((busy->code() == EBUSY && busy->unavailable()));
    auto big = response_error(error_response(3, Error::refusal(EFBIG, "cap")));
    CHECK((big->code() == EFBIG && big->refused()));
    auto lost = response_error(error_response(3, Error(ENOTCONN, "vm away")));
    CHECK((lost->code() == ENOTCONN && !lost->from_guest()));
    CHECK_THAT(lost->message(), Catch::Contains("on the remote node"));
    CHECK(response_error(Message{{"id", 1}, {"err", 100000}})->code() == EIO);
    CHECK(response_error(Message{{"id", 1}, {"err", -1}})->code() == EIO);
    CHECK(response_error(Message{{"id", 1}, {"err", "x"}})->code() == EIO);
}

TEST_CASE("wire: the hello names both versions when they differ", "[remote]") {
    auto ok = answer_hello(hello_request("mounthost"), "lab");
    REQUIRE(ok);
    CHECK(check_greeting(*ok));
    CHECK((*ok)["node"] == "lab");

    auto future = answer_hello(Message{{"id", 0}, {"op", "hello"}, {"version", 9}}, "lab");
    REQUIRE_FALSE(future);
    CHECK(future.error().code() == EPROTONOSUPPORT);
    CHECK_THAT(future.error().message(),
               Catch::Contains("protocol version 9") && Catch::Contains("speaks 1"));
    auto refused = check_greeting(error_response(0, future.error()));
    REQUIRE_FALSE(refused);
    CHECK(refused.error().code() == EPROTONOSUPPORT);
    CHECK_THAT(refused.error().message(), Catch::Contains("protocol version 9"));

    auto newer = check_greeting(Message{{"id", 0}, {"version", 2}});
    REQUIRE_FALSE(newer);
    CHECK_THAT(newer.error().message(), Catch::Contains("version 2"));
    CHECK_FALSE(answer_hello(Message{{"id", 0}, {"op", "stat"}}, "lab"));
}

TEST_CASE("remote attributes: round trip, and refused when absurd", "[remote]") {
    auto file = fs::make_text_file("k", [] { return std::string("hello\n"); });
    auto attr = file->getattr();
    REQUIRE(attr);
    auto wire = fs::encode_remote_attr(*attr, *file);
    auto back = fs::decode_remote_attr(wire);
    REQUIRE(back);
    CHECK(back->attr.st.st_mode == attr->st.st_mode);
    CHECK(back->attr.st.st_size == attr->st.st_size);
    CHECK(back->attr.st.st_mtim.tv_sec == attr->st.st_mtim.tv_sec);
    CHECK(back->attr.timeout == attr->timeout);
    CHECK(back->entry_timeout == file->entry_timeout());
    CHECK(back->exposure == fs::Exposure::kGuestData);

    struct Row {
        const char* field;
        Message value;
    };
    for (const auto& row : std::vector<Row>{{"mode", 0777},     // no file type
                                            {"mode", 0170777},  // an unknown one
                                            {"size", -1},
                                            {"attr_s", 1e9},  // cached for decades
                                            {"entry_s", -1.0},
                                            {"uid", uint64_t(1) << 40},
                                            {"mtime", "yesterday"}}) {
        INFO(row.field << " = " << row.value.dump());
        Message bad = wire;
        bad[row.field] = row.value;
        auto r = fs::decode_remote_attr(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().code() == EPROTO);
    }
    Message kaddr = wire;
    kaddr["kaddr"] = true;
    CHECK(fs::decode_remote_attr(kaddr)->exposure == fs::Exposure::kKernelAddresses);
}

TEST_CASE("remote callers: round trip; the group list is bounded", "[remote]") {
    fs::Caller who{1000, 1000, {4, 27}, 4242};
    auto back = fs::decode_caller(fs::encode_caller(who));
    REQUIRE(back);
    CHECK(back->uid == 1000);
    CHECK(back->groups == std::vector<gid_t>{4, 27});
    CHECK(back->pid == 4242);
    Message many = fs::encode_caller(who);
    many["groups"] = std::vector<int>(1000, 1);
    CHECK_FALSE(fs::decode_caller(many));
}

TEST_CASE("remote link: a transport that fails is reported with its own words", "[remote]") {
    LinkSettings s;
    s.node = "far";
    s.command = {"sh", "-c",
                 "echo 'ssh: connect to host far port 22: Connection refused' >&2; exit 255"};
    s.connect_timeout = Millis(5000);
    RemoteLink link(s);
    link.start();
    link.wait_for_first(Deadline::after_ms(5000));
    auto st = link.status();
    CHECK(st.state != LinkState::kUp);
    CHECK_THAT(st.error, Catch::Contains("Connection refused"));
    auto started = Clock::now();
    auto r = link.call(Message{{"op", "stat"}, {"path", ""}});
    REQUIRE_FALSE(r);
    CHECK(r.error().code() == ENOTCONN);
    CHECK_THAT(r.error().message(), Catch::Contains("unreachable"));
    // Two failures in a row: the node is away, and requests do not wait for it.
    CHECK(Clock::now() - started < Millis(3000));
    link.stop();
    CHECK(link.call(Message{{"op", "stat"}}).error().code() == ESHUTDOWN);
}

TEST_CASE("remote link: a peer that is no cloudvmi, or speaks another version, is refused",
          "[remote]") {
    char dir[] = "/tmp/cvmi-wire-XXXXXX";
    REQUIRE(::mkdtemp(dir));
    struct Row {
        const char* what;
        std::vector<uint8_t> greeting;
        const char* says;
    };
    auto future = encode_frame(Message{{"id", 0}, {"version", 9}, {"node", "x"}});
    std::vector<Row> rows = {
        {"a shell banner", {'W', 'e', 'l', 'c', 'o', 'm', 'e', '!', '\n'}, "not a cloudvmi peer"},
        {"a newer cloudvmi", future, "protocol version 9"},
    };
    for (const auto& row : rows) {
        INFO(row.what);
        std::string path = std::string(dir) + "/greeting";
        std::ofstream(path, std::ios::binary)
            .write(reinterpret_cast<const char*>(row.greeting.data()),
                   static_cast<std::streamsize>(row.greeting.size()));
        LinkSettings s;
        s.node = "odd";
        s.command = {"sh", "-c", "cat " + path + "; sleep 5"};
        RemoteLink link(s);
        link.start();
        link.wait_for_first(Deadline::after_ms(5000));
        auto st = link.status();
        CHECK(st.state != LinkState::kUp);
        CHECK_THAT(st.error, Catch::Contains(row.says));
        link.stop();
        ::unlink(path.c_str());
    }
    ::rmdir(dir);
}
