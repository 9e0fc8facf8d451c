#include "redirector/gdb/rsp_connection.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <vector>

#include "common/log.h"
#include "common/stream_socket.h"
#include "common/strings.h"

namespace cloudvmi::gdb {

namespace {

constexpr int kMaxResends = 3;
// A peer that sends this much non-protocol data is not a GDB stub.
constexpr int kMaxGarbageBytes = 4096;

}  // namespace

ErrorOr<Endpoint> Endpoint::parse(std::string_view text) {
    Endpoint e;
    if (starts_with(text, "unix:")) {
        e.kind = Kind::kUnix;
        e.path = std::string(text.substr(5));
        // QEMU-style options after a comma (",server=on") are not part of the path.
        if (auto comma = e.path.find(','); comma != std::string::npos) e.path.resize(comma);
        if (e.path.empty()) return make_error(EINVAL, "empty unix socket path");
        return e;
    }
    if (!text.empty() && text[0] == '/') {
        e.kind = Kind::kUnix;
        e.path = std::string(text);
        return e;
    }
    std::string_view rest = text;
    if (starts_with(rest, "tcp:")) rest = rest.substr(4);
    auto colon = rest.rfind(':');
    if (colon == std::string_view::npos) {
        return make_error(EINVAL, "gdbstub address '" + std::string(text) +
                                      "' is neither unix:PATH nor tcp:HOST:PORT");
    }
    auto port = parse_u64(rest.substr(colon + 1));
    if (!port || *port == 0 || *port > 65535) {
        return make_error(EINVAL, "bad port in gdbstub address '" + std::string(text) + "'");
    }
    e.kind = Kind::kTcp;
    e.host = std::string(rest.substr(0, colon));
    if (e.host.size() >= 2 && e.host.front() == '[' && e.host.back() == ']') {
        e.host = e.host.substr(1, e.host.size() - 2);
    }
    if (e.host.empty()) e.host = "127.0.0.1";
    e.port = static_cast<uint16_t>(*port);
    return e;
}

uint64_t Endpoint::identity() const {
    if (kind != Kind::kUnix) return 0;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return 0;
    return (static_cast<uint64_t>(st.st_ino) * 1000003ULL) ^
           (static_cast<uint64_t>(st.st_ctim.tv_sec) * 1000000000ULL +
            static_cast<uint64_t>(st.st_ctim.tv_nsec));
}

std::string Endpoint::to_string() const {
    if (kind == Kind::kUnix) {
        // After "unix:" a comma starts QEMU-style options, so a path with one (only a bare
        // path can have one) is written bare, to parse back to the same socket.
        return path.find(',') != std::string::npos ? path : "unix:" + path;
    }
    // parse() takes one pair of brackets off the host ("[::1]"): put them back when needed.
    bool bracket = host.find(':') != std::string::npos || (!host.empty() && host[0] == '[');
    return "tcp:" + (bracket ? "[" + host + "]" : host) + ":" + std::to_string(port);
}

RspConnection::RspConnection(UniqueFd fd, Endpoint endpoint)
    : fd_(std::move(fd)), endpoint_(std::move(endpoint)) {}

ErrorOr<std::unique_ptr<RspConnection>> RspConnection::connect(const Endpoint& endpoint,
                                                               Deadline deadline) {
    UniqueFd fd = endpoint.kind == Endpoint::Kind::kUnix
                      ? TRY(connect_unix_socket(endpoint.path, deadline))
                      : TRY(connect_tcp_socket(endpoint.host, endpoint.port, deadline));
    return std::unique_ptr<RspConnection>(new RspConnection(std::move(fd), endpoint));
}

std::optional<int> RspConnection::peer_pid() const {
    if (closed() || endpoint_.kind != Endpoint::Kind::kUnix) return std::nullopt;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(fd_.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 || cred.pid <= 0) {
        return std::nullopt;
    }
    return cred.pid;
}

void RspConnection::close() {
    fd_.reset();
    events_.clear();
    decoder_.reset();
}

ErrorOr<void> RspConnection::write_all(std::string_view bytes, Deadline deadline) {
    if (closed()) return make_error(ENOTCONN, "gdbstub connection is closed");
    auto sent = send_all(fd_.get(), bytes, deadline, "gdbstub");
    if (!sent && sent.error().code() != ETIMEDOUT) close();
    return sent;
}

ErrorOr<bool> RspConnection::read_some(Deadline deadline) {
    if (closed()) return make_error(ENOTCONN, "gdbstub connection is closed");
    pollfd p{fd_.get(), POLLIN, 0};
    int r;
    do {
        r = ::poll(&p, 1, deadline.poll_timeout_ms());
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno_error("poll");
    if (r == 0) return false;
    char buf[16384];
    ssize_t n;
    do {
        n = ::recv(fd_.get(), buf, sizeof buf, 0);
    } while (n < 0 && errno == EINTR);
    if (n == 0) {
        close();
        return make_error(ECONNRESET, "gdbstub closed the connection");
    }
    if (n < 0) {
        if (errno == EAGAIN) return true;
        int err = errno;
        close();
        return make_error(err, "reading from gdbstub");
    }
    std::vector<WireEvent> out;
    decoder_.feed(std::string_view(buf, static_cast<size_t>(n)), out);
    for (auto& e : out)
        events_.push_back(std::move(e));
    return true;
}

ErrorOr<void> RspConnection::send_raw(std::string_view bytes, Deadline deadline) {
    return write_all(bytes, deadline);
}

ErrorOr<void> RspConnection::send_packet(std::string_view payload, Deadline deadline) {
    last_sent_ = encode_packet(payload);
    LOG_TRACE("gdb <- %s", printable(payload, 200).c_str());
    return write_all(last_sent_, deadline);
}

ErrorOr<std::optional<std::string>> RspConnection::next_packet(Deadline deadline,
                                                               bool timeout_is_error) {
    int resends = 0;
    // Past the deadline only one more read is made (a poll with a deadline of now): a
    // stream of acks or notifications cannot keep us here.
    bool read_after_deadline = false;
    while (true) {
        while (!events_.empty()) {
            WireEvent e = std::move(events_.front());
            events_.pop_front();
            switch (e.kind) {
                case WireEvent::Kind::kAck:
                    break;
                case WireEvent::Kind::kNack:
                    if (!ack_mode_ || last_sent_.empty()) break;
                    if (++resends > kMaxResends) {
                        return make_error(EPROTO, "gdbstub keeps rejecting our packet");
                    }
                    TRY(write_all(last_sent_, deadline));
                    break;
                case WireEvent::Kind::kPacket:
                    if (ack_mode_) TRY(write_all("+", deadline));
                    LOG_TRACE("gdb -> %s", printable(e.payload, 200).c_str());
                    return std::optional<std::string>(std::move(e.payload));
                case WireEvent::Kind::kNotification:
                    LOG_DEBUG("gdbstub notification ignored: %s", printable(e.payload).c_str());
                    break;
                case WireEvent::Kind::kBadPacket:
                    LOG_WARN("gdbstub sent a corrupted packet (%s), asking again",
                             printable(e.payload).c_str());
                    if (ack_mode_) TRY(write_all("-", deadline));
                    if (++garbage_bytes_ > kMaxGarbageBytes / 64) {
                        close();
                        return make_error(
                            EPROTO, "too many corrupted packets from " + endpoint_.to_string());
                    }
                    break;
                case WireEvent::Kind::kInterrupt:
                case WireEvent::Kind::kGarbage:
                    if (++garbage_bytes_ > kMaxGarbageBytes) {
                        close();
                        return make_error(EPROTO, endpoint_.to_string() +
                                                      " does not speak the GDB remote protocol");
                    }
                    break;
            }
        }
        // Reads at least once, even past the deadline: a poll for a packet already waiting
        // in the socket uses a deadline of now.
        if (deadline.expired()) {
            if (read_after_deadline) {
                if (!timeout_is_error) return std::optional<std::string>();
                return make_error(ETIMEDOUT, "gdbstub " + endpoint_.to_string() +
                                                 " sent no answer in time, only other traffic");
            }
            read_after_deadline = true;
        }
        auto got = TRY(read_some(deadline));
        if (events_.empty() && deadline.expired() && !timeout_is_error) {
            return std::optional<std::string>();
        }
        if (!got && events_.empty()) {
            if (!timeout_is_error) return std::optional<std::string>();
            if (garbage_bytes_ > 0) {
                return make_error(EPROTO, strformat("%s sent %d bytes that are not GDB remote "
                                                    "protocol and no valid answer",
                                                    endpoint_.to_string().c_str(), garbage_bytes_));
            }
            return make_error(ETIMEDOUT, "no answer from gdbstub " + endpoint_.to_string() +
                                             (decoder_.mid_packet() ? " (packet cut off)" : ""));
        }
    }
}

ErrorOr<std::string> RspConnection::receive_packet(Deadline deadline) {
    auto p = TRY(next_packet(deadline, true));
    return std::move(*p);
}

ErrorOr<std::optional<std::string>> RspConnection::try_receive_packet(Deadline deadline) {
    return next_packet(deadline, false);
}

}  // namespace cloudvmi::gdb
