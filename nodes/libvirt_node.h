// One node of the cloud: a libvirt connection (qemu:///system, qemu+ssh://host/system,
// an alias from libvirt's uri_aliases) and the domains running there, kept current.
//
// A thread of its own per node connects, lists the active domains (running or paused)
// with what their XML declares (nodes/domain_xml.h), and lists them again whenever libvirt
// reports a lifecycle event (started, stopped, renamed, migrated away, ...). A connection
// that closes (libvirtd restarted, the ssh link or the host gone) is noticed by libvirt's
// close callback and keepalive, and opened again with exponential back-off; meanwhile
// the last listing is kept and the status says why the node is away.
//
// libvirt events need an event loop: one process-wide thread runs libvirt's default
// implementation (registered once, before the first connection).
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/deadline.h"
#include "common/error.h"
#include "nodes/domain_xml.h"

namespace cloudvmi::nodes {

struct DomainInfo {
    DomainDescription description;  // name, uuid, gdb and qmp from its XML
    int id = -1;                    // libvirt's domain id while it runs
    std::string state;              // "running", "paused", ... (libvirt's view)
    std::string state_reason;       // "user", "migration", "unknown", ...
};

enum class NodeState { kConnecting, kConnected, kAway };
const char* to_string(NodeState state);  // "connecting", "connected", "away"

struct NodeStatus {
    NodeState state = NodeState::kConnecting;
    // The URI libvirt resolved (an alias becomes its URI); whether it names another host.
    std::string resolved_uri;
    bool remote = false;
    std::string error;        // why it is away (or the last refresh failed)
    Clock::time_point since;  // of the current state
    size_t domains = 0;
    double refresh_ms = 0;  // the last listing's round trips, all together
    double rtt_ms = -1;     // one round trip to the daemon, before the last listing
    uint64_t refreshes = 0;
    uint64_t connects = 0;  // successful connections, the first included
    std::string describe() const;
};

struct NodeOptions {
    std::string name;  // the node's name in /vmi
    std::string uri;   // libvirt connection URI or alias
    Millis retry_min{500};
    Millis retry_max{30000};
    // libvirt keepalive for remote connections: a probe every `interval` seconds, the
    // link declared dead after `count` unanswered ones.
    int keepalive_interval = 5;
    unsigned keepalive_count = 3;
};

// Whether a libvirt URI reaches another host ("qemu+ssh://host/system", "qemu://host/..."):
// sockets its domains' XML names are on that host, not here.
bool is_remote_uri(const std::string& uri);

class LibvirtNode {
  public:
    // Called from the node's thread after each listing that changed something.
    using Listener = std::function<void(const std::vector<DomainInfo>& domains)>;

    // Starts the node's thread; the first connection is made there (see status()).
    static std::unique_ptr<LibvirtNode> start(NodeOptions options, Listener listener = {});
    ~LibvirtNode();
    LibvirtNode(const LibvirtNode&) = delete;
    LibvirtNode& operator=(const LibvirtNode&) = delete;

    const NodeOptions& options() const { return options_; }
    NodeStatus status() const;
    std::vector<DomainInfo> domains() const;
    // Counts listings: waits until one newer than `after` was made, or the deadline.
    uint64_t generation() const;
    bool wait_for_generation(uint64_t after, Deadline deadline) const;

  private:
    struct Connection;
    LibvirtNode(NodeOptions options, Listener listener);

    void run();
    // Connects and registers the callbacks; the error says why not.
    ErrorOr<void> connect_locked(std::unique_lock<std::mutex>& lock);
    ErrorOr<std::vector<DomainInfo>> list_domains();
    void refresh(std::unique_lock<std::mutex>& lock);
    void disconnect();
    // The node is away for `why`: state, time, reason, and a wake-up for observers.
    void mark_away_locked(std::string why);

  public:
    // From libvirt's event loop thread (through the callbacks' opaque): a flag and a
    // wake-up, nothing that could block that thread.
    void on_lifecycle();
    void on_close(int reason);

  private:
    NodeOptions options_;
    Listener listener_;
    std::unique_ptr<Connection> connection_;  // the node thread's alone

    // Lock order: mutex_ only; never held across a libvirt call or the listener.
    mutable std::mutex mutex_;
    mutable std::condition_variable changed_;  // stop_, dirty_, closed_, generation_
    bool stop_ = false;
    bool dirty_ = true;    // a lifecycle event came: list again
    bool closed_ = false;  // the connection closed under us
    NodeStatus status_;
    std::vector<DomainInfo> domains_;
    uint64_t generation_ = 0;
    std::thread thread_;
};

}  // namespace cloudvmi::nodes
