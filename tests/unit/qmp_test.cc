// QMP: the message decoder on QEMU's own lines and on malformed ones, and QmpMonitor
// against a scripted QMP server on a unix socket (greeting, capabilities, cached state,
// events, a silent or flooding peer).
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <thread>

#include "redirector/guest/qmp_message.h"
#include "redirector/guest/qmp_monitor.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

TEST_CASE("parse_qmp_message on QEMU 7.2's lines", "[qmp]") {
    auto greeting = parse_qmp_message(
        R"({"QMP": {"version": {"qemu": {"micro": 19, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}})");
    REQUIRE(greeting);
    CHECK(greeting->kind == QmpMessage::Kind::kGreeting);
    auto empty = parse_qmp_message(R"({"return": {}})");
    REQUIRE(empty);
    CHECK(empty->kind == QmpMessage::Kind::kReturn);
    CHECK_FALSE(empty->has_run_state);
    auto paused = parse_qmp_message(
        R"({"return": {"status": "paused", "singlestep": false, "running": false}})");
    REQUIRE(paused);
    REQUIRE(paused->has_run_state);
    CHECK_FALSE(paused->run_state.running);
    CHECK(paused->run_state.status == "paused");
    auto event = parse_qmp_message(
        R"({"timestamp": {"seconds": 1764538000, "microseconds": 12}, "event": "STOP"})");
    REQUIRE(event);
    CHECK(event->kind == QmpMessage::Kind::kEvent);
    CHECK(event->event == "STOP");
    CHECK(qmp_event_changes_run_state(event->event));
    CHECK_FALSE(qmp_event_changes_run_state("NIC_RX_FILTER_CHANGED"));
    auto error = parse_qmp_message(
        R"({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}})");
    REQUIRE(error);
    CHECK(error->kind == QmpMessage::Kind::kError);
    CHECK(error->error == "CommandNotFound: The command nope has not been found");
}

TEST_CASE("parse_qmp_message refuses what QEMU never sends", "[qmp]") {
    for (const char* bad :
         {"", "[]", "42", "{", R"({"hello": 1})", R"({"event": 7})",
          R"({"return": {"running": "yes", "status": "running"}})",
          R"({"return": {"running": true}})", R"({"return": {"running": true, "status": ""}})",
          R"({"error": "bad"})", "\xff\xfe"}) {
        INFO(bad);
        auto m = parse_qmp_message(bad);
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EPROTO);
    }
    std::string huge = R"({"event": ")" + std::string(kQmpMaxLine, 'A') + R"("})";
    CHECK_FALSE(parse_qmp_message(huge));
}

namespace {

// A QMP server that plays a script: for each command it receives, it sends what
// `answer` returns for it (several lines allowed); it greets first unless told not to.
class ScriptedQmp {
  public:
    using Answer = std::function<std::string(const std::string& command)>;
    ScriptedQmp(const TempDir& dir, Answer answer, std::string greeting = kGreeting)
        : path_(dir.file("qmp.sock")), answer_(std::move(answer)) {
        listener_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path_.c_str());
        REQUIRE(::bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(listener_, 1) == 0);
        thread_ = std::thread([this, greeting] { serve(greeting); });
    }
    ~ScriptedQmp() {
        ::shutdown(listener_, SHUT_RDWR);
        if (client_ >= 0) ::shutdown(client_, SHUT_RDWR);
        thread_.join();
        ::close(listener_);
        if (client_ >= 0) ::close(client_);
    }
    const std::string& path() const { return path_; }
    int commands() const { return commands_; }
    // Sends a line now, outside any answer (an event).
    void push(const std::string& line) {
        std::string l = line + "\n";
        REQUIRE(::send(client_, l.data(), l.size(), MSG_NOSIGNAL) ==
                static_cast<ssize_t>(l.size()));
    }

    static constexpr const char* kGreeting = R"({"QMP": {"version": {}, "capabilities": []}})";

  private:
    void serve(const std::string& greeting) {
        client_ = ::accept4(listener_, nullptr, nullptr, SOCK_CLOEXEC);
        if (client_ < 0) return;
        if (!greeting.empty()) send_text(greeting + "\n");
        std::string buffer;
        char chunk[512];
        while (true) {
            ssize_t n = ::recv(client_, chunk, sizeof chunk, 0);
            if (n <= 0) return;
            buffer.append(chunk, static_cast<size_t>(n));
            for (auto nl = buffer.find('\n'); nl != std::string::npos; nl = buffer.find('\n')) {
                std::string line = buffer.substr(0, nl);
                buffer.erase(0, nl + 1);
                ++commands_;
                send_text(answer_(line));
            }
        }
    }
    void send_text(const std::string& text) {
        if (!text.empty()) (void)::send(client_, text.data(), text.size(), MSG_NOSIGNAL);
    }

    std::string path_;
    Answer answer_;
    int listener_ = -1;
    int client_ = -1;
    std::atomic<int> commands_{0};
    std::thread thread_;
};

std::string status_line(const char* status, bool running) {
    return std::string(R"({"return": {"status": ")") + status +
           R"(", "singlestep": false, "running": )" + (running ? "true" : "false") + "}}\n";
}

}  // namespace

TEST_CASE("QmpMonitor asks query-status again only after a run-state event", "[qmp]") {
    TempDir dir;
    std::atomic<bool> running{true};
    ScriptedQmp server(dir, [&](const std::string& command) -> std::string {
        if (command.find("qmp_capabilities") != std::string::npos) return "{\"return\": {}}\n";
        if (command.find("query-status") != std::string::npos) {
            return running ? status_line("running", true) : status_line("paused", false);
        }
        return "";
    });
    auto monitor = QmpMonitor::connect(server.path(), Deadline::after_ms(2000));
    REQUIRE(monitor);
    auto first = (*monitor)->current(Deadline::after_ms(2000));
    REQUIRE(first);
    CHECK(first->running);
    CHECK(first->status == "running");
    int asked = server.commands();
    for (int i = 0; i < 5; ++i)
        REQUIRE((*monitor)->current(Deadline::after_ms(2000)));
    CHECK(server.commands() == asked);  // cached: no round trip while nothing happens

    server.push(
        R"({"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NIC_RX_FILTER_CHANGED"})");
    running = false;
    server.push(R"({"timestamp": {"seconds": 1, "microseconds": 3}, "event": "STOP"})");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    auto later = (*monitor)->current(Deadline::after_ms(2000));
    REQUIRE(later);
    CHECK_FALSE(later->running);
    CHECK(later->status == "paused");
    CHECK(server.commands() == asked + 1);
    CHECK((*monitor)->describe() == "qmp:" + server.path());
}

TEST_CASE("QmpMonitor: clear errors for a silent, wrong or broken peer", "[qmp]") {
    TempDir dir;
    SECTION("no such socket") {
        auto m = QmpMonitor::connect(dir.file("none.sock"), Deadline::after_ms(500));
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == ENOENT);
        CHECK(m.error().message().find("QMP socket") != std::string::npos);
    }
    SECTION("no greeting (another client holds the socket)") {
        ScriptedQmp server(
            dir, [](const std::string&) { return std::string(); }, "");
        auto start = Clock::now();
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(300));
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == ETIMEDOUT);
        CHECK(m.error().message().find("another client") != std::string::npos);
        CHECK(elapsed_ms(start) < 2000);
    }
    SECTION("not QMP") {
        ScriptedQmp server(
            dir, [](const std::string&) { return std::string(); }, "SSH-2.0-OpenSSH_9.2");
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(1000));
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EPROTO);
    }
    SECTION("capabilities refused") {
        ScriptedQmp server(dir, [](const std::string&) {
            return std::string(R"({"error": {"class": "GenericError", "desc": "no"}})") + "\n";
        });
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(1000));
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EPROTO);
        CHECK(m.error().message().find("GenericError") != std::string::npos);
    }
    SECTION("an endless line") {
        ScriptedQmp server(dir, [](const std::string&) {
            return std::string(R"({"return": {"x": ")") + std::string(100000, 'a');
        });
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(2000));
        REQUIRE_FALSE(m);
        CHECK(m.error().code() == EPROTO);
    }
    SECTION("a query-status that never comes back") {
        ScriptedQmp server(dir, [](const std::string& command) {
            return command.find("qmp_capabilities") != std::string::npos
                       ? std::string("{\"return\": {}}\n")
                       : std::string();
        });
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(1000));
        REQUIRE(m);
        auto start = Clock::now();
        auto state = (*m)->current(Deadline::after_ms(200));
        REQUIRE_FALSE(state);
        CHECK(state.error().code() == ETIMEDOUT);
        CHECK(elapsed_ms(start) < 2000);
    }
    SECTION("an event flood is drained in bounded steps") {
        ScriptedQmp server(dir, [](const std::string& command) {
            if (command.find("qmp_capabilities") != std::string::npos)
                return std::string("{\"return\": {}}\n");
            std::string out;
            for (int i = 0; i < 2000; ++i)
                out += R"({"event": "RTC_CHANGE", "timestamp": {"seconds": 1, "microseconds": 1}})"
                       "\n";
            return out + status_line("running", true);
        });
        auto m = QmpMonitor::connect(server.path(), Deadline::after_ms(2000));
        REQUIRE(m);
        auto state = (*m)->current(Deadline::after_ms(2000));
        REQUIRE(state);
        CHECK(state->running);
    }
}
