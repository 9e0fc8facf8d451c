// fs/wire_server.h: `cloudvmi serve` answering a peer over a socket pair, in process, with
// a tree whose VMs' gdbstubs do not exist (their requests fail fast with ENOTCONN).
#include "fs/wire_server.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <future>
#include <stdexcept>

#include "remote/wire.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using remote::Message;

namespace {

const Message kWho{{"uid", 0}, {"gid", 0}, {"pid", 1}, {"comm", "test"}};

Config make_config(const std::string& state_dir) {
    auto c = Config::parse("node: n1\nstate_dir: " + state_dir +
                               "\nrequest_timeout_ms: 500\nvms:\n"
                               "  - name: vm-a\n    gdb: unix:/nonexistent/a.gdb\n"
                               "  - name: vm-b\n    gdb: unix:/nonexistent/b.gdb\n",
                           "wire-test.yaml");
    if (!c) throw std::runtime_error(c.error().message());
    return *c;
}

// A server on one end of a socket pair; the test is the mount on the other.
struct Served {
    test::TempDir dir{"cloudvmi-wire"};
    Config config = make_config(dir.state_dir());
    Filesystem fs{config, Filesystem::session_options(config, "")};
    int ours = -1, theirs = -1;
    std::future<int> exit_status;
    remote::FrameReader reader;

    Served() {
        int sv[2];
        if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) throw std::runtime_error("socketpair");
        ours = sv[0];
        theirs = sv[1];
        exit_status = std::async(std::launch::async, [this] {
            int rc = serve_wire(fs, "n1", theirs, theirs);
            ::shutdown(theirs, SHUT_RDWR);
            return rc;
        });
    }
    ~Served() {
        ::shutdown(ours, SHUT_WR);
        if (exit_status.valid()) exit_status.wait();
        ::close(ours);
        ::close(theirs);
        fs.shutdown();
    }
    void send_bytes(const std::vector<uint8_t>& bytes) const {
        REQUIRE(::write(ours, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
    }
    void send(const Message& m) const { send_bytes(remote::encode_frame(m)); }
    // The next message, within 5 s.
    Message receive() {
        for (;;) {
            auto m = reader.next();
            REQUIRE(m);
            if (m->has_value()) return **m;
            pollfd p{ours, POLLIN, 0};
            REQUIRE(::poll(&p, 1, 5000) == 1);
            uint8_t buf[65536];
            ssize_t n = ::read(ours, buf, sizeof buf);
            REQUIRE(n > 0);
            reader.feed(std::span<const uint8_t>(buf, size_t(n)));
        }
    }
    Message ask(Message m) {
        send(m);
        return receive();
    }
    void greet() {
        auto greeting = ask(remote::hello_request("mounthost"));
        REQUIRE(remote::check_greeting(greeting));
        CHECK(greeting["node"] == "n1");
    }
    int error_of(const Message& answer) const {
        auto e = remote::response_error(answer);
        return e ? e->code() : 0;
    }
};

}  // namespace

TEST_CASE("wire server: inventory, files and errors over the protocol", "[remote]") {
    Served s;
    s.greet();

    auto listing =
        s.ask(Message{{"id", 1}, {"op", "list"}, {"path", ""}, {"plus", true}, {"who", kWho}});
    REQUIRE(listing["id"] == 1);
    std::vector<std::string> names;
    for (const auto& e : listing["entries"])
        names.push_back(e["name"].get<std::string>());
    CHECK(names == std::vector<std::string>{"vm-a", "vm-b", ".cloudvmi"});

    auto status = s.ask(Message{{"id", 2},
                                {"op", "open"},
                                {"path", ".cloudvmi/status"},
                                {"flags", 0},
                                {"prefetch", 65536},
                                {"who", kWho}});
    REQUIRE(s.error_of(status) == 0);
    CHECK(status["eof"] == true);
    CHECK_FALSE(status.contains("handle"));  // the whole file came with the open
    auto text = status["data"].get_binary();
    CHECK_THAT(std::string(text.begin(), text.end()), Catch::Contains("node: n1"));

    auto ping = s.ask(Message{{"id", 3}, {"op", "ping"}});
    CHECK(ping["vms"] == 2);

    // A VM that cannot be reached: the mount's own answer for it, unchanged.
    auto guest = s.ask(Message{{"id", 4}, {"op", "stat"}, {"path", "vm-a/proc/loadavg"}});
    CHECK(s.error_of(guest) == ENOTCONN);

    struct Row {
        const char* what;
        Message request;
        int err;
    };
    for (const auto& row : std::vector<Row>{
             {"a path out of the node", {{"op", "stat"}, {"path", "vm-a/.."}}, EINVAL},
             {"an absolute path", {{"op", "stat"}, {"path", "/etc"}}, EINVAL},
             {"an empty component", {{"op", "stat"}, {"path", "vm-a//proc"}}, EINVAL},
             {"no such VM", {{"op", "stat"}, {"path", "vm-z"}}, ENOENT},
             {"no path", {{"op", "stat"}}, EINVAL},
             {"an unknown operation", {{"op", "format"}, {"path", ""}}, EOPNOTSUPP},
             {"a handle never opened",
              {{"op", "pread"}, {"handle", 99}, {"offset", 0}, {"size", 1}},
              EBADF},
             {"a name with a slash",
              {{"op", "unlink"}, {"path", "vm-a/root"}, {"name", "a/b"}, {"who", kWho}},
              EINVAL},
             {"a change outside any VM",
              {{"op", "mkdir"}, {"path", ""}, {"name", "x"}, {"mode", 0755}, {"who", kWho}},
              EACCES},
             {"a change without its caller",
              {{"op", "mkdir"}, {"path", "vm-a/root"}, {"name", "x"}, {"mode", 0755}},
              EINVAL},
             {"a bad caller", {{"op", "stat"}, {"path", ""}, {"who", "root"}}, EINVAL},
         }) {
        INFO(row.what);
        Message request = row.request;
        request["id"] = 10;
        auto answer = s.ask(request);
        CHECK(answer["id"] == 10);
        CHECK(s.error_of(answer) == row.err);
    }

    // A malformed frame ends the connection, with a protocol error.
    s.send_bytes({0, 0, 0, 2, 0xa1, 0x61});
    s.send_bytes({0xff, 0xff, 0xff, 0xff});
    CHECK(s.exit_status.get() == 1);
}

TEST_CASE("wire server: a hello of another version is answered, then refused", "[remote]") {
    Served s;
    auto answer = s.ask(Message{{"id", 0}, {"op", "hello"}, {"version", 2}});
    CHECK(s.error_of(answer) == EPROTONOSUPPORT);
    CHECK_THAT(answer["msg"].get<std::string>(), Catch::Contains("protocol version 2"));
    CHECK(s.exit_status.get() == 1);
}

TEST_CASE("wire server: requests before the hello are refused", "[remote]") {
    Served s;
    auto answer = s.ask(Message{{"id", 5}, {"op", "stat"}, {"path", ""}});
    CHECK(s.error_of(answer) == EPROTO);
    CHECK(s.exit_status.get() == 1);
}

namespace {

// Hands out a file in pieces of at most `piece` bytes, as seq_file does.
class PiecemealFile final : public FileHandle {
  public:
    PiecemealFile(std::string text, size_t piece, bool fail_at_end = false)
        : text_(std::move(text)), piece_(piece), fail_at_end_(fail_at_end) {}
    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t off) override {
        if (static_cast<size_t>(off) >= text_.size() && fail_at_end_)
            return make_error(EIO, "gone");
        size_t start = std::min(static_cast<size_t>(off), text_.size());
        size_t n = std::min({size, piece_, text_.size() - start});
        return std::vector<uint8_t>(text_.begin() + start, text_.begin() + start + n);
    }

  private:
    std::string text_;
    size_t piece_;
    bool fail_at_end_;
};

}  // namespace

TEST_CASE("wire server: an open's first bytes end only at an empty read", "[remote]") {
    std::string text(10000, 'x');
    PiecemealFile paged(text, 4096);
    auto whole = read_head(paged, 65536);
    REQUIRE(whole);
    CHECK(whole->data.size() == 10000);  // three pages, not the first one
    CHECK(whole->eof);

    PiecemealFile large(text, 4096);
    auto head = read_head(large, 8192);
    REQUIRE(head);
    CHECK(head->data.size() == 8192);
    CHECK_FALSE(head->eof);  // more may follow: the handle stays open

    PiecemealFile failing(text, 4096, true);
    auto partial = read_head(failing, 65536);
    REQUIRE(partial);
    CHECK(partial->data.size() == 10000);
    CHECK_FALSE(partial->eof);  // the peer's next read meets the error
}
