#include "remote/remote_link.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/log.h"
#include "common/stream_socket.h"

extern char** environ;

namespace cloudvmi::remote {

namespace {

constexpr Millis kFirstBackoff{200};
constexpr Millis kMaxBackoff{30000};
// A connection that lived this long was a good one: the next failure starts backing off
// from the beginning again.
constexpr Millis kStableConnection{30000};
constexpr size_t kStderrTail = 400;
// Pings in a row a server may leave unanswered before its connection is given up.
constexpr int kPingsMissed = 3;

// The transport's last line, for error messages ("ssh: connect to host ... refused").
std::string last_line(const std::string& text) {
    std::string t = text;
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r'))
        t.pop_back();
    auto nl = t.find_last_of('\n');
    return nl == std::string::npos ? t : t.substr(nl + 1);
}

// A frame sent whole at once, without waiting (the supervisor's own small frames).
enum class Sent { kWhole, kNothing, kTorn };
Sent send_now(int fd, const std::vector<uint8_t>& frame) {
    ssize_t w = ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w == static_cast<ssize_t>(frame.size())) return Sent::kWhole;
    return w > 0 ? Sent::kTorn : Sent::kNothing;
}

}  // namespace

const char* to_string(LinkState s) {
    switch (s) {
        case LinkState::kConnecting:
            return "connecting";
        case LinkState::kUp:
            return "connected";
        case LinkState::kDown:
            return "away";
        case LinkState::kStopped:
            return "stopped";
    }
    return "?";
}

RemoteLink::RemoteLink(LinkSettings settings) : settings_(std::move(settings)) {
    status_.since = Clock::now();
    if (::pipe2(wake_fd_, O_CLOEXEC | O_NONBLOCK) != 0) wake_fd_[0] = wake_fd_[1] = -1;
}

RemoteLink::~RemoteLink() {
    stop();
    for (int fd : wake_fd_) {
        if (fd >= 0) ::close(fd);
    }
}

void RemoteLink::start() {
    if (supervisor_.joinable()) return;
    supervisor_ = std::thread([this] { supervise(); });
}

void RemoteLink::wait_for_first(Deadline deadline) {
    std::unique_lock lock(mutex_);
    cv_.wait_until(lock, deadline.when(), [&] { return first_done_ || stopping_; });
}

void RemoteLink::stop() {
    {
        std::lock_guard lock(mutex_);
        if (stopping_ && !supervisor_.joinable()) return;
        stopping_ = true;
        for (auto& [id, p] : pending_) {
            if (!p->result) p->result = make_error(ESHUTDOWN, "the mount is ending");
        }
        cv_.notify_all();
    }
    if (wake_fd_[1] >= 0) (void)!::write(wake_fd_[1], "x", 1);
    if (supervisor_.joinable()) supervisor_.join();
    std::lock_guard lock(mutex_);
    status_.state = LinkState::kStopped;
}

LinkStatus RemoteLink::status() const {
    std::lock_guard lock(mutex_);
    LinkStatus s = status_;
    s.in_flight = pending_.size() - (ping_id_ ? 1 : 0);
    return s;
}

void RemoteLink::sleep_interruptible(Millis d) {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, d, [&] { return stopping_; });
}

void RemoteLink::supervise() {
    Millis backoff = kFirstBackoff;
    for (;;) {
        {
            std::lock_guard lock(mutex_);
            if (stopping_) return;
            status_.state = LinkState::kConnecting;
        }
        auto started = Clock::now();
        Error why(0, "");
        bool was_up = false;
        auto child = spawn();
        if (!child) {
            why = child.error();
        } else {
            FrameReader reader;
            auto hello = handshake(*child, reader);
            was_up = hello.has_value();
            why = hello ? serve_connection(*child, reader) : hello.error();
            end_connection(*child, why);
        }
        LOG_WARN("node %s: %s", settings_.node.c_str(), why.message().c_str());
        {
            std::lock_guard lock(mutex_);
            status_.state = LinkState::kDown;
            status_.since = Clock::now();
            if (!was_up) failures_++;
            status_.error = why.message();
            first_done_ = true;
            cv_.notify_all();
            if (stopping_) return;
        }
        if (Clock::now() - started > kStableConnection) backoff = kFirstBackoff;
        sleep_interruptible(backoff);
        backoff = std::min(backoff * 2, kMaxBackoff);
    }
}

ErrorOr<RemoteLink::Child> RemoteLink::spawn() const {
    if (settings_.command.empty()) return make_error(EINVAL, "no command to reach the node");
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
        return make_error(errno, "socketpair");
    UniqueFd ours(sv[0]), theirs(sv[1]);
    int ep[2];
    if (::pipe2(ep, O_CLOEXEC) != 0) return make_error(errno, "pipe");
    UniqueFd err_read(ep[0]), err_write(ep[1]);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, theirs.get(), 0);
    posix_spawn_file_actions_adddup2(&actions, theirs.get(), 1);
    posix_spawn_file_actions_adddup2(&actions, err_write.get(), 2);
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    // Its own session: a terminal's ^C reaches the mount, which ends the link itself. The
    // mount's threads may block signals; the transport starts with none blocked.
    sigset_t none, defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGHUP);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr,
                             POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    std::vector<char*> argv;
    for (const auto& a : settings_.command)
        argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    int rc = posix_spawnp(&pid, argv[0], &actions, &attr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) return make_error(rc, "starting " + settings_.command[0]);
    ::fcntl(ours.get(), F_SETFL, O_NONBLOCK);
    ::fcntl(err_read.get(), F_SETFL, O_NONBLOCK);
    Child c;
    c.pid = pid;
    c.sock = std::move(ours);
    c.err = std::move(err_read);
    return c;
}

void RemoteLink::drain_stderr(Child& child) {
    char buf[512];
    ssize_t r = ::read(child.err.get(), buf, sizeof buf);
    if (r <= 0) return;
    child.said.append(buf, size_t(r));
    if (child.said.size() > kStderrTail) child.said.erase(0, child.said.size() - kStderrTail);
}

std::string RemoteLink::with_last_words(const Child& child, const std::string& what) {
    std::string said = last_line(child.said);
    return what + (said.empty() ? "" : ": " + said);
}

ErrorOr<void> RemoteLink::handshake(Child& child, FrameReader& reader) {
    Deadline deadline = Deadline::after(settings_.connect_timeout);
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    auto frame = encode_frame(hello_request(host));
    size_t off = 0;
    auto failure = [&](int err, const std::string& what) {
        return make_error(err, with_last_words(child, what));
    };
    for (;;) {
        pollfd fds[3] = {
            {child.sock.get(), POLLIN, 0}, {child.err.get(), POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
        if (off < frame.size()) fds[0].events |= POLLOUT;
        int n = ::poll(fds, 3, deadline.poll_timeout_ms());
        if (n < 0 && errno == EINTR) continue;
        if (n == 0) return failure(ETIMEDOUT, "no answer from the node within the connect timeout");
        if (fds[2].revents) return make_error(ESHUTDOWN, "the mount is ending");
        if (fds[1].revents & POLLIN) drain_stderr(child);
        if ((fds[0].revents & POLLOUT) && off < frame.size()) {
            ssize_t w = ::send(child.sock.get(), frame.data() + off, frame.size() - off,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) off += size_t(w);
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            uint8_t buf[4096];
            ssize_t r = ::recv(child.sock.get(), buf, sizeof buf, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN)) {
                // Let the transport finish saying why.
                ::poll(fds + 1, 1, 200);
                drain_stderr(child);
                return failure(EHOSTUNREACH, "the transport ended before the greeting");
            }
            if (r > 0) reader.feed(std::span<const uint8_t>(buf, size_t(r)));
            auto greeting = reader.next();
            if (!greeting) return failure(EPROTO, "bad greeting: " + greeting.error().message());
            if (greeting->has_value()) {
                auto checked = check_greeting(**greeting);
                if (!checked) return std::unexpected(checked.error());
                std::lock_guard write_lock(write_mutex_);
                std::lock_guard lock(mutex_);
                write_fd_ = child.sock.get();
                status_.state = LinkState::kUp;
                status_.since = Clock::now();
                status_.connects++;
                failures_ = 0;
                status_.error.clear();
                auto name = field_string(**greeting, "node");
                status_.remote_node = name ? *name : "";
                first_done_ = true;
                last_ping_ = Clock::time_point{};
                cv_.notify_all();
                LOG_INFO("node %s: connected", settings_.node.c_str());
                return {};
            }
        }
    }
}

Error RemoteLink::serve_connection(Child& child, FrameReader& reader) {
    child.said.clear();  // what it said while logging in is no reason for a later drop
    for (;;) {
        if (auto silent = maybe_ping(child.sock.get())) return *silent;
        if (auto torn = flush_orphans(child.sock.get())) return *torn;
        pollfd fds[3] = {
            {child.sock.get(), POLLIN, 0}, {child.err.get(), POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
        int n = ::poll(fds, 3, 500);
        if (n < 0 && errno == EINTR) continue;
        if (fds[2].revents) return Error(ESHUTDOWN, "the mount is ending");
        if (fds[1].revents & POLLIN) drain_stderr(child);
        if (!(fds[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        uint8_t buf[65536];
        ssize_t r = ::recv(child.sock.get(), buf, sizeof buf, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (r <= 0) return Error(EIO, with_last_words(child, "connection lost"));
        reader.feed(std::span<const uint8_t>(buf, size_t(r)));
        for (;;) {
            auto message = reader.next();
            if (!message)
                return Error(EPROTO, "malformed frame from the node: " + message.error().message());
            if (!message->has_value()) break;
            auto id = field_u64(**message, "id");
            if (!id) return Error(EPROTO, "response without an id: " + id.error().message());
            deliver(std::move(**message));
        }
    }
}

void RemoteLink::deliver(Message response) {
    uint64_t id = response["id"].get<uint64_t>();
    std::lock_guard lock(mutex_);
    auto it = pending_.find(id);
    if (it == pending_.end()) {
        // Its caller gave up (timeout), or it was posted. A handle opened for a caller that
        // is gone is closed, or it would stay open on the node until the connection ends.
        if (auto handle = field_u64(response, "handle"))
            orphans_.push_back(Message{{"op", "close"}, {"handle", *handle}});
        return;
    }
    auto pending = it->second;
    pending_.erase(it);
    if (ping_id_ && *ping_id_ == id) {
        ping_id_.reset();
        status_.rtt_ms =
            std::chrono::duration<double, std::milli>(Clock::now() - pending->sent).count();
        auto vms = field_u64(response, "vms");
        status_.vms = vms ? static_cast<int64_t>(*vms) : -1;
        return;
    }
    if (auto e = response_error(response)) {
        pending->result = std::unexpected(*e);
    } else {
        pending->result = std::move(response);
    }
    status_.requests++;
    cv_.notify_all();
}

std::optional<Error> RemoteLink::maybe_ping(int fd) {
    auto now = Clock::now();
    {
        std::lock_guard lock(mutex_);
        // ssh's keepalives watch the network; this watches the server behind it.
        if (ping_id_ && now - last_ping_ > kPingsMissed * settings_.ping_interval) {
            return Error(ETIMEDOUT,
                         "no answer to a ping for " +
                             std::to_string(kPingsMissed * settings_.ping_interval.count() / 1000) +
                             " s");
        }
    }
    std::unique_lock write_lock(write_mutex_, std::try_to_lock);
    if (!write_lock.owns_lock()) return std::nullopt;  // a caller is writing: next round
    std::lock_guard lock(mutex_);
    if (ping_id_ || now - last_ping_ < settings_.ping_interval) return std::nullopt;
    uint64_t id = next_id_++;
    switch (send_now(fd, encode_frame(Message{{"id", id}, {"op", "ping"}}))) {
        case Sent::kNothing:
            return std::nullopt;  // the socket is full: next round
        // A partial frame would corrupt the stream: end it (the supervisor reconnects).
        case Sent::kTorn:
            return Error(EIO, "a ping could not be sent whole");
        case Sent::kWhole:
            break;
    }
    auto pending = std::make_shared<Pending>();
    pending->sent = now;
    pending_[id] = pending;
    ping_id_ = id;
    last_ping_ = now;
    return std::nullopt;
}

std::optional<Error> RemoteLink::flush_orphans(int fd) {
    std::unique_lock write_lock(write_mutex_, std::try_to_lock);
    if (!write_lock.owns_lock()) return std::nullopt;
    std::lock_guard lock(mutex_);
    while (!orphans_.empty()) {
        Message m = orphans_.front();
        m["id"] = next_id_++;
        switch (send_now(fd, encode_frame(m))) {
            case Sent::kWhole:
                orphans_.pop_front();
                continue;
            case Sent::kNothing:
                return std::nullopt;  // the socket is full: next round
            case Sent::kTorn:
                return Error(EIO, "a close could not be sent whole");
        }
    }
    return std::nullopt;
}

void RemoteLink::end_connection(Child& child, const Error& why) {
    // Wakes callers blocked in send() first, so that the write lock comes free.
    if (child.sock.valid()) ::shutdown(child.sock.get(), SHUT_RDWR);
    {
        std::lock_guard write_lock(write_mutex_);
        std::lock_guard lock(mutex_);
        bool was_up = write_fd_ >= 0;
        write_fd_ = -1;
        if (was_up) status_.drops++;
        // Down from now on: calls made meanwhile wait for the next connection.
        status_.state = LinkState::kDown;
        for (auto& [id, p] : pending_) {
            if (id == ping_id_ || p->result) continue;
            p->result = make_error(EIO, "connection to node " + settings_.node +
                                            " lost during the request (" + why.message() + ")");
            status_.failed++;
        }
        pending_.clear();
        ping_id_.reset();
        orphans_.clear();  // their handles went with the connection
        cv_.notify_all();
    }
    if (child.pid > 0) {
        ::kill(child.pid, SIGTERM);
        auto deadline = Clock::now() + Millis(1000);
        while (::waitpid(child.pid, nullptr, WNOHANG) == 0) {
            if (Clock::now() > deadline) {
                ::kill(child.pid, SIGKILL);
                ::waitpid(child.pid, nullptr, 0);
                break;
            }
            std::this_thread::sleep_for(Millis(10));
        }
        child.pid = -1;
    }
}

ErrorOr<void> RemoteLink::send_frame(const Message& m, uint64_t generation) {
    auto frame = encode_frame(m);
    if (frame.size() > kMaxFrame + 4)
        return std::unexpected(Error::refusal(E2BIG, "request too large for one frame"));
    std::lock_guard write_lock(write_mutex_);
    // From here: the time waiting for other writers does not count against this frame.
    Deadline deadline = Deadline::after(settings_.request_timeout);
    {
        std::lock_guard lock(mutex_);
        if (status_.connects != generation)
            return make_error(EIO, "connection to node " + settings_.node + " lost");
    }
    int fd = write_fd_;
    if (fd < 0) return make_error(EIO, "connection to node " + settings_.node + " lost");
    size_t sent = 0;
    auto whole =
        send_all(fd, std::string_view(reinterpret_cast<const char*>(frame.data()), frame.size()),
                 deadline, "node " + settings_.node, &sent);
    if (!whole) {
        // Stuck or broken mid-frame: the stream is unusable, and ended for a reconnect.
        if (sent > 0) ::shutdown(fd, SHUT_RDWR);
        return make_error(EIO, "sending to node " + settings_.node + " failed");
    }
    return {};
}

ErrorOr<Message> RemoteLink::call(Message request, std::optional<uint64_t> on_connection,
                                  uint64_t* answered_on) {
    auto pending = std::make_shared<Pending>();
    uint64_t id, generation;
    {
        std::unique_lock lock(mutex_);
        if (!on_connection) {
            // Right after a drop the next connection is worth waiting for; a node that
            // failed twice in a row is away, and its requests fail at once until it is back.
            cv_.wait_for(lock, settings_.connect_timeout, [&] {
                return stopping_ || status_.state == LinkState::kUp || failures_ >= 2;
            });
        }
        if (stopping_) return make_error(ESHUTDOWN, "the mount is ending");
        if (on_connection &&
            (*on_connection != status_.connects || status_.state != LinkState::kUp)) {
            // What the request names (an open file) lived on a connection that is gone.
            return make_error(EIO, "the connection to node " + settings_.node +
                                       " this file was opened on is gone");
        }
        if (status_.state != LinkState::kUp) {
            return make_error(ENOTCONN, "node " + settings_.node + " is unreachable" +
                                            (status_.error.empty() ? "" : ": " + status_.error));
        }
        id = next_id_++;
        generation = status_.connects;
        request["id"] = id;
        pending->sent = Clock::now();
        pending_[id] = pending;
    }
    if (answered_on) *answered_on = generation;
    auto sent = send_frame(request, generation);
    std::unique_lock lock(mutex_);
    if (!sent) {
        pending_.erase(id);
        status_.failed++;
        return std::unexpected(sent.error());
    }
    auto deadline = Clock::now() + settings_.request_timeout;
    cv_.wait_until(lock, deadline, [&] { return pending->result.has_value(); });
    if (!pending->result) {
        pending_.erase(id);
        status_.failed++;
        return make_error(ETIMEDOUT, "node " + settings_.node + " did not answer within " +
                                         std::to_string(settings_.request_timeout.count()) + " ms");
    }
    return std::move(*pending->result);
}

void RemoteLink::post(Message request, uint64_t on_connection) {
    {
        std::lock_guard lock(mutex_);
        if (status_.state != LinkState::kUp || status_.connects != on_connection) return;
        request["id"] = next_id_++;  // its answer finds no caller and is dropped
    }
    (void)send_frame(request, on_connection);
}

}  // namespace cloudvmi::remote
