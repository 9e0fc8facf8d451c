#include "redirector/guest/qmp_monitor.h"

#include <poll.h>
#include <sys/socket.h>

#include "common/stream_socket.h"
#include "common/strings.h"
#include "redirector/gdb/rsp_connection.h"

namespace cloudvmi {

namespace {

// A QEMU that floods us with events could keep drain_events() busy forever: after this
// many, the state is simply asked again.
constexpr int kMaxEventsPerDrain = 256;

ErrorOr<UniqueFd> connect_address(const std::string& address, Deadline deadline) {
    std::string text = address;
    if (!text.starts_with("unix:") && !text.starts_with("tcp:")) text = "unix:" + text;
    auto endpoint = TRY(gdb::Endpoint::parse(text));
    if (endpoint.kind == gdb::Endpoint::Kind::kUnix) {
        return connect_unix_socket(endpoint.path, deadline);
    }
    return connect_tcp_socket(endpoint.host, endpoint.port, deadline);
}

}  // namespace

ErrorOr<std::unique_ptr<QmpMonitor>> QmpMonitor::connect(const std::string& address,
                                                         Deadline deadline) {
    auto fd = connect_address(address, deadline);
    if (!fd) return std::unexpected(fd.error().with_context("QMP socket " + address));
    std::unique_ptr<QmpMonitor> monitor(new QmpMonitor(std::move(*fd), address));
    auto greeting = TRY_CTX(monitor->next_message(deadline), "QMP socket " + address);
    if (!greeting || greeting->kind != QmpMessage::Kind::kGreeting) {
        return make_error(
            greeting ? EPROTO : ETIMEDOUT,
            "QMP socket " + address + ": no QMP greeting (is another client connected to it?)");
    }
    TRY_CTX(monitor->send_command("qmp_capabilities", deadline), "QMP socket " + address);
    auto reply = TRY_CTX(monitor->next_reply(deadline), "QMP socket " + address);
    if (reply.kind != QmpMessage::Kind::kReturn) {
        return make_error(EPROTO, "QMP socket " + address + ": qmp_capabilities: " + reply.error);
    }
    return monitor;
}

ErrorOr<VmRunState> QmpMonitor::current(Deadline deadline) {
    TRY(drain_events());
    if (stale_) state_ = TRY(query_status(deadline));
    return state_;
}

ErrorOr<VmRunState> QmpMonitor::query_status(Deadline deadline) {
    // Cleared before asking: an event that arrives with or after the reply marks it again.
    stale_ = false;
    TRY(send_command("query-status", deadline));
    auto reply = TRY(next_reply(deadline));
    if (reply.kind == QmpMessage::Kind::kError) {
        return make_error(EPROTO, "QMP query-status: " + reply.error);
    }
    if (!reply.has_run_state) return make_error(EPROTO, "QMP query-status: no run state");
    return reply.run_state;
}

ErrorOr<void> QmpMonitor::send_command(const char* name, Deadline deadline) {
    if (!fd_.valid()) return make_error(ENOTCONN, "QMP connection closed");
    auto sent = send_all(fd_.get(), strformat("{\"execute\": \"%s\"}\n", name), deadline, "QMP");
    if (!sent && sent.error().code() != ETIMEDOUT) fd_.reset();
    return sent;
}

ErrorOr<QmpMessage> QmpMonitor::next_reply(Deadline deadline) {
    while (true) {
        auto m = TRY(next_message(deadline));
        if (!m) return make_error(ETIMEDOUT, "QMP did not answer in time");
        if (m->kind == QmpMessage::Kind::kEvent) {
            note_event(*m);
            continue;
        }
        if (m->kind == QmpMessage::Kind::kGreeting) {
            return make_error(EPROTO, "QMP: a second greeting");
        }
        return *m;
    }
}

ErrorOr<std::optional<QmpMessage>> QmpMonitor::next_message(Deadline deadline) {
    while (true) {
        if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
            std::string line = buffer_.substr(0, nl);
            buffer_.erase(0, nl + 1);
            if (!line.empty() && line.back() == '\r') line.pop_back();
            if (line.empty()) continue;
            auto m = parse_qmp_message(line);
            if (!m) {
                fd_.reset();
                return std::unexpected(m.error());
            }
            return std::optional<QmpMessage>(std::move(*m));
        }
        if (buffer_.size() > kQmpMaxLine) {
            fd_.reset();
            return make_error(EPROTO, "QMP: a line longer than 64 KiB");
        }
        if (!fd_.valid()) return make_error(ENOTCONN, "QMP connection closed");
        pollfd p{fd_.get(), POLLIN, 0};
        int r = ::poll(&p, 1, deadline.poll_timeout_ms());
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno_error("poll QMP");
        if (r == 0) return std::optional<QmpMessage>();
        char chunk[4096];
        ssize_t n = ::recv(fd_.get(), chunk, sizeof chunk, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n <= 0) {
            int err = n < 0 ? errno : ECONNRESET;
            fd_.reset();
            return make_error(err, "QMP connection lost (QEMU gone?)");
        }
        buffer_.append(chunk, static_cast<size_t>(n));
    }
}

ErrorOr<void> QmpMonitor::drain_events() {
    for (int i = 0; i < kMaxEventsPerDrain; ++i) {
        auto m = TRY(next_message(Deadline(Clock::now())));
        if (!m) return {};
        if (m->kind != QmpMessage::Kind::kEvent) {
            fd_.reset();
            return make_error(EPROTO, "QMP: an answer nobody asked for");
        }
        note_event(*m);
    }
    stale_ = true;
    return {};
}

void QmpMonitor::note_event(const QmpMessage& m) {
    if (qmp_event_changes_run_state(m.event)) stale_ = true;
}

}  // namespace cloudvmi
