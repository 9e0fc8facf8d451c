#include "common/stream_socket.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <memory>

namespace cloudvmi {

namespace {

ErrorOr<void> wait_connected(int fd, Deadline deadline, const std::string& what) {
    pollfd p{fd, POLLOUT, 0};
    int r;
    do {
        r = ::poll(&p, 1, deadline.poll_timeout_ms());
    } while (r < 0 && errno == EINTR);
    if (r < 0) return errno_error("poll " + what);
    if (r == 0) return make_error(ETIMEDOUT, "connecting to " + what + " timed out");
    int err = 0;
    socklen_t len = sizeof err;
    if (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0) return errno_error("getsockopt");
    if (err != 0) return make_error(err, "connecting to " + what);
    return {};
}

}  // namespace

ErrorOr<UniqueFd> connect_unix_socket(const std::string& path, Deadline deadline) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path) {
        return make_error(ENAMETOOLONG, "socket path too long: " + path);
    }
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd.valid()) return errno_error("socket");
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0) {
        if (errno != EINPROGRESS && errno != EAGAIN) return errno_error("connecting to " + path);
        TRY(wait_connected(fd.get(), deadline, path));
    }
    return fd;
}

ErrorOr<UniqueFd> connect_tcp_socket(const std::string& host, uint16_t port, Deadline deadline) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    std::string service = std::to_string(port);
    int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &res);
    if (rc != 0) return make_error(EHOSTUNREACH, "resolving " + host + ": " + gai_strerror(rc));
    std::unique_ptr<addrinfo, decltype(&freeaddrinfo)> guard(res, freeaddrinfo);
    Error last(ECONNREFUSED, "connecting to " + host + ":" + service);
    for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
        UniqueFd fd(::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
        if (!fd.valid()) continue;
        int one = 1;
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (::connect(fd.get(), ai->ai_addr, ai->ai_addrlen) == 0) return fd;
        if (errno != EINPROGRESS) {
            last = Error(errno, "connecting to " + host + ":" + service);
            continue;
        }
        auto ok = wait_connected(fd.get(), deadline, host + ":" + service);
        if (ok) return fd;
        last = ok.error();
    }
    return std::unexpected(last);
}

ErrorOr<void> send_all(int fd, std::string_view bytes, Deadline deadline, const std::string& peer,
                       size_t* sent) {
    if (sent) *sent = 0;
    while (!bytes.empty()) {
        ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
        if (n > 0) {
            bytes.remove_prefix(static_cast<size_t>(n));
            if (sent) *sent += static_cast<size_t>(n);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) {
            pollfd p{fd, POLLOUT, 0};
            int r = ::poll(&p, 1, deadline.poll_timeout_ms());
            if (r == 0) return make_error(ETIMEDOUT, "sending to " + peer + " timed out");
            if (r < 0 && errno != EINTR) return errno_error("poll");
            continue;
        }
        int err = n < 0 ? errno : ECONNRESET;
        return make_error(err == EPIPE ? ECONNRESET : err, "sending to " + peer);
    }
    return {};
}

}  // namespace cloudvmi
