// A gdbstub that is missing, silent, dead or not a gdbstub at all gives a clear error within
// the configured timeout. Real sockets, fake peers; no guest needed.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <thread>

#include "common/deadline.h"
#include "redirector/session/guest_session.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;

namespace {

// A unix-socket server running `behaviour` on each accepted connection.
class FakePeer {
  public:
    explicit FakePeer(std::function<void(int)> behaviour) : behaviour_(std::move(behaviour)) {
        fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_un addr{};
        // A long $TMPDIR would otherwise be cut short silently by snprintf.
        REQUIRE(path_.size() < sizeof addr.sun_path);
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd_, 4) == 0);
        thread_ = std::thread([this] {
            while (!stop_) {
                int c = ::accept(fd_, nullptr, nullptr);
                if (c < 0) return;
                behaviour_(c);
                ::close(c);
            }
        });
    }
    ~FakePeer() {
        stop_ = true;
        ::shutdown(fd_, SHUT_RDWR);
        ::close(fd_);
        thread_.join();
    }
    std::string endpoint() const { return "unix:" + path_; }
    // Also the session's state directory: its lock file is removed with the socket.
    const std::string& dir() const { return dir_.path(); }

  private:
    std::function<void(int)> behaviour_;
    test::TempDir dir_{"cloudvmi-peer"};
    std::string path_ = dir_.file("stub.sock");
    int fd_ = -1;
    std::atomic<bool> stop_{false};
    std::thread thread_;
};

SessionOptions fast_options(const std::string& endpoint, const std::string& state_dir) {
    SessionOptions o;
    o.gdb_endpoint = endpoint;
    o.state_dir = state_dir;
    o.client.connect_timeout = Millis(400);
    o.client.request_timeout = Millis(400);
    return o;
}

Error attach_error(const SessionOptions& o, double* took_ms) {
    auto start = Clock::now();
    GuestSession s(o);
    auto r = s.attach();
    *took_ms = elapsed_ms(start);
    REQUIRE_FALSE(r);
    CHECK(s.status().state == SessionState::kError);
    return r.error();
}

void sleep_until_closed(int c) {
    char buf[256];
    while (::read(c, buf, sizeof buf) > 0) {
    }
}

}  // namespace

TEST_CASE("a missing gdbstub socket fails at once with ENOENT", "[stub]") {
    test::TempDir dir{"cloudvmi-state"};
    // The state directory exists, so an ENOENT can only be about the socket.
    REQUIRE(std::filesystem::is_directory(dir.path()));
    double ms = 0;
    auto e = attach_error(fast_options("unix:/nonexistent/dir/vm.gdb", dir.path()), &ms);
    CHECK(e.code() == ENOENT);
    CHECK(e.describe().find("/nonexistent/dir/vm.gdb") != std::string::npos);
    CHECK(ms < 1000);
}

TEST_CASE("a silent peer times out within the request timeout", "[stub]") {
    FakePeer peer([](int c) { sleep_until_closed(c); });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK(e.code() == ETIMEDOUT);
    CHECK(e.describe().find("no answer from gdbstub") != std::string::npos);
    CHECK(ms >= 350);
    CHECK(ms < 2000);
}

TEST_CASE("a peer speaking another protocol is reported as such", "[stub]") {
    FakePeer peer([](int c) {
        std::string junk = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
        (void)::send(c, junk.data(), junk.size(), MSG_NOSIGNAL);
        sleep_until_closed(c);
    });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK(e.code() == EPROTO);
    CHECK(e.describe().find("not GDB remote protocol") != std::string::npos);
    CHECK(ms < 2000);
}

TEST_CASE("a peer flooding garbage is cut off", "[stub]") {
    FakePeer peer([](int c) {
        std::string junk(8192, 'x');
        for (int i = 0; i < 4; ++i) {
            if (::send(c, junk.data(), junk.size(), MSG_NOSIGNAL) < 0) break;
        }
        sleep_until_closed(c);
    });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK(e.code() == EPROTO);
    CHECK(e.describe().find("does not speak the GDB remote protocol") != std::string::npos);
    CHECK(ms < 2000);
}

TEST_CASE("a peer that hangs up is reported as a reset connection", "[stub]") {
    FakePeer peer([](int) {});
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK(e.code() == ECONNRESET);
    CHECK(ms < 1000);
}

TEST_CASE("a peer with corrupted checksums is asked again, then dropped", "[stub]") {
    FakePeer peer([](int c) {
        char buf[512];
        while (::read(c, buf, sizeof buf) > 0) {
            std::string bad = "$OK#00";  // wrong checksum every time
            if (::send(c, bad.data(), bad.size(), MSG_NOSIGNAL) < 0) break;
        }
    });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK((e.code() == EPROTO || e.code() == ETIMEDOUT));
    CHECK(ms < 2000);
}

TEST_CASE("a malformed endpoint is rejected before connecting", "[stub]") {
    auto bad = gdb::Endpoint::parse("tcp:localhost:99999");
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code() == EINVAL);
    auto nohost = gdb::Endpoint::parse("vm.gdb");
    REQUIRE_FALSE(nohost);
    auto ok = gdb::Endpoint::parse("unix:/run/vm.gdb,server=on,wait=off");
    REQUIRE(ok);
    CHECK(ok->path == "/run/vm.gdb");
    auto tcp = gdb::Endpoint::parse("tcp:127.0.0.1:1234");
    REQUIRE(tcp);
    CHECK(tcp->port == 1234);
}

TEST_CASE("a packet already waiting is found by a poll with a deadline of now", "[stub]") {
    // QEMU tells its debugger when someone else pauses the VM; the session looks for that
    // stop reply without waiting (the mailbox engine never blocks on the stub).
    FakePeer peer([](int c) {
        const char stop[] = "$T02thread:01;#04";
        REQUIRE(::write(c, stop, sizeof stop - 1) == sizeof stop - 1);
        sleep_until_closed(c);
    });
    auto endpoint = gdb::Endpoint::parse(peer.endpoint());
    REQUIRE(endpoint);
    auto conn = gdb::RspConnection::connect(*endpoint, Deadline::after(Millis(1000)));
    REQUIRE(conn);
    CHECK((*conn)->peer_pid() == ::getpid());  // the fake peer runs in this process
    std::this_thread::sleep_for(Millis(100));  // the packet is in the socket by now
    auto p = (*conn)->try_receive_packet(Deadline::after(Millis(0)));
    REQUIRE(p);
    REQUIRE(p->has_value());
    CHECK(**p == "T02thread:01;");
    auto none = (*conn)->try_receive_packet(Deadline::after(Millis(0)));
    REQUIRE(none);
    CHECK_FALSE(none->has_value());
}

namespace {

std::string rsp_packet(const std::string& payload) {
    unsigned sum = 0;
    for (unsigned char ch : payload)
        sum += ch;
    char tail[4];
    std::snprintf(tail, sizeof tail, "#%02x", sum & 0xff);
    return "$" + payload + tail;
}

// Answers each packet of the client with answer(payload) (acknowledged first); stops when
// the client hangs up.
void serve_packets(int c, const std::function<std::string(const std::string&)>& answer) {
    std::string in;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(c, buf, sizeof buf)) > 0) {
        in.append(buf, static_cast<size_t>(n));
        size_t start, end;
        while ((start = in.find('$')) != std::string::npos &&
               (end = in.find('#', start)) != std::string::npos && end + 2 < in.size()) {
            std::string payload = in.substr(start + 1, end - start - 1);
            in.erase(0, end + 3);
            std::string reply = "+" + rsp_packet(answer(payload));
            if (::send(c, reply.data(), reply.size(), MSG_NOSIGNAL) < 0) return;
        }
    }
}

}  // namespace

TEST_CASE("a stub whose target description never advances is dropped", "[stub]") {
    std::atomic<int> asked{0};
    FakePeer peer([&](int c) {
        serve_packets(c, [&](const std::string& p) -> std::string {
            if (p.rfind("qSupported", 0) == 0) return "PacketSize=1000;qXfer:features:read+";
            if (p.rfind("qXfer:features:read:", 0) == 0) {
                ++asked;
                return "m";  // no bytes, and never the last part
            }
            return "";
        });
    });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    CHECK(e.code() == EPROTO);
    CHECK(e.describe().find("does not advance") != std::string::npos);
    CHECK(asked == 1);
    CHECK(ms < 2000);
}

TEST_CASE("a stub streaming acks instead of an answer times out", "[stub]") {
    std::atomic<bool> stop{false};
    FakePeer peer([&](int c) {
        std::string acks(4096, '+');
        while (!stop && ::send(c, acks.data(), acks.size(), MSG_NOSIGNAL) > 0) {
        }
    });
    double ms = 0;
    auto e = attach_error(fast_options(peer.endpoint(), peer.dir()), &ms);
    stop = true;
    CHECK(e.code() == ETIMEDOUT);
    CHECK(ms < 2000);
}
