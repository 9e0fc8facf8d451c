// The mount's side of a remote node: one `ssh ... cloudvmi serve --stdio` child process,
// many requests in flight over it (remote/wire.h), and reconnection when it drops.
//
// A request is one frame out and one back: callers block until their answer, their
// timeout, or the loss of the connection (EIO: whether the remote acted is unknown). Right
// after a drop, a call waits for the next connection (up to the connect timeout), so the
// first request after a drop succeeds once ssh is back; once two attempts in a row have
// failed, calls fail at once with ENOTCONN until a connection succeeds. Reconnection backs off from
// 0.2 s to 30 s while the node stays unreachable.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/deadline.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "remote/wire.h"

namespace cloudvmi::remote {

struct LinkSettings {
    std::string node;                  // the node's name, for messages
    std::vector<std::string> command;  // argv of the transport: ssh [options] HOST COMMAND
    Millis connect_timeout{15000};     // spawn, ssh login and hello
    Millis request_timeout{10000};     // one request, once sent
    Millis ping_interval{5000};        // round-trip time probes while idle or busy
};

enum class LinkState { kConnecting, kUp, kDown, kStopped };
const char* to_string(LinkState s);

struct LinkStatus {
    LinkState state = LinkState::kConnecting;
    Clock::time_point since{};
    std::string error;      // why the last connection failed or ended
    double rtt_ms = -1;     // last ping's round trip (-1: none yet)
    int64_t vms = -1;       // VMs the remote serves, from the last ping (-1: unknown)
    uint64_t connects = 0;  // connections made
    uint64_t drops = 0;     // connections lost
    uint64_t requests = 0;  // answered requests
    uint64_t failed = 0;    // requests lost with a connection or timed out
    size_t in_flight = 0;
    std::string remote_node;  // the name the remote gave itself
};

class RemoteLink {
  public:
    explicit RemoteLink(LinkSettings settings);
    ~RemoteLink();
    RemoteLink(const RemoteLink&) = delete;
    RemoteLink& operator=(const RemoteLink&) = delete;

    // Starts connecting (in the background).
    void start();
    // Waits until the first connection succeeded or failed, or `deadline`.
    void wait_for_first(Deadline deadline);
    // Sends `request` (its id is set here) and waits for the answer. The answer's error, if
    // any, is returned as the Error (the remote's errno unchanged); a lost connection is EIO,
    // no answer in time ETIMEDOUT, a stopped link ESHUTDOWN. `on_connection`: only on that
    // connection (what the request names, an open handle, lives there), else EIO at once;
    // `answered_on` is set to the connection the request went out on.
    ErrorOr<Message> call(Message request, std::optional<uint64_t> on_connection = std::nullopt,
                          uint64_t* answered_on = nullptr);
    // Sends without waiting for the answer (releasing a remote handle), on that connection
    // only; nothing is sent once it is gone (and the handle with it).
    void post(Message request, uint64_t on_connection);
    LinkStatus status() const;
    const LinkSettings& settings() const { return settings_; }
    // Ends the connection for good; pending calls get ESHUTDOWN.
    void stop();

  private:
    struct Pending {
        std::optional<ErrorOr<Message>> result;
        Clock::time_point sent;
    };
    // The transport: its process, the socket that is its stdin and stdout, and its stderr
    // with the last words read from it (for error messages).
    struct Child {
        pid_t pid = -1;
        UniqueFd sock, err;
        std::string said;
    };

    void supervise();
    ErrorOr<Child> spawn() const;
    ErrorOr<void> handshake(Child& child, FrameReader& reader);
    // Reads what the transport wrote on stderr into child.said (its tail).
    static void drain_stderr(Child& child);
    // `what`, followed by the transport's last line if it said anything.
    static std::string with_last_words(const Child& child, const std::string& what);
    // Reads frames until the connection ends; returns why it ended.
    Error serve_connection(Child& child, FrameReader& reader);
    void deliver(Message response);
    // Sends a ping when one is due; an error when the server left pings unanswered or a
    // ping was torn.
    std::optional<Error> maybe_ping(int fd);
    // Sends the closes of handles whose callers gave up before the open was answered.
    std::optional<Error> flush_orphans(int fd);
    void end_connection(Child& child, const Error& why);
    // Sends a whole frame on connection `generation`, within the request timeout counted
    // from when it may write.
    ErrorOr<void> send_frame(const Message& m, uint64_t generation);
    void sleep_interruptible(Millis d);

    const LinkSettings settings_;
    // Lock order: write_mutex_ before mutex_. mutex_ guards everything below it; write_mutex_
    // serialises whole frames on the pipe to the child.
    std::mutex write_mutex_;
    int write_fd_ = -1;  // the child's stdin while up; guarded by both mutexes (either reads)
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    LinkStatus status_;
    uint64_t next_id_ = 1;
    std::map<uint64_t, std::shared_ptr<Pending>> pending_;
    std::optional<uint64_t> ping_id_;
    std::deque<Message> orphans_;  // closes to send for handles nobody waits for
    Clock::time_point last_ping_{};
    bool first_done_ = false;
    int failures_ = 0;  // connection attempts failed in a row
    bool stopping_ = false;
    int wake_fd_[2] = {-1, -1};  // a pipe: stop() wakes the supervisor's poll
    std::thread supervisor_;
};

}  // namespace cloudvmi::remote
