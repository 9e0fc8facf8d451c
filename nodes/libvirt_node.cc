#include "nodes/libvirt_node.h"

#include <libvirt/libvirt.h>

#include <cctype>
#include <cstdlib>

#include "common/log.h"
#include "common/strings.h"
#include "nodes/libvirt_error.h"

namespace cloudvmi::nodes {

namespace {

// Without a listing newer than this, the node lists again (a lost event is not forever).
constexpr Millis kResyncEvery{30000};

void ensure_event_loop() {
    static std::once_flag once;
    std::call_once(once, [] {
        // libvirt prints every error to stderr by default; ours carry them in Error.
        virSetErrorFunc(nullptr, [](void*, virErrorPtr) {});
        if (virEventRegisterDefaultImpl() < 0) {
            LOG_ERROR("libvirt event loop: %s", virGetLastErrorMessage());
            return;
        }
        std::thread([] {
            while (true) {
                if (virEventRunDefaultImpl() < 0) {
                    LOG_WARN("libvirt event loop: %s", virGetLastErrorMessage());
                    std::this_thread::sleep_for(Millis(100));
                }
            }
        }).detach();
    });
}

const char* state_name(int state) {
    switch (state) {
        case VIR_DOMAIN_RUNNING:
            return "running";
        case VIR_DOMAIN_BLOCKED:
            return "blocked";
        case VIR_DOMAIN_PAUSED:
            return "paused";
        case VIR_DOMAIN_SHUTDOWN:
            return "shutdown";
        case VIR_DOMAIN_SHUTOFF:
            return "shutoff";
        case VIR_DOMAIN_CRASHED:
            return "crashed";
        case VIR_DOMAIN_PMSUSPENDED:
            return "pmsuspended";
        default:
            return "nostate";
    }
}

std::string paused_reason(int reason) {
    static const char* const names[] = {
        "unknown", "user",        "migration",     "save",           "dump",
        "ioerror", "watchdog",    "from_snapshot", "shutting_down",  "snapshot",
        "crashed", "starting_up", "postcopy",      "postcopy_failed"};
    if (reason >= 0 && static_cast<size_t>(reason) < std::size(names)) return names[reason];
    return std::to_string(reason);
}

// A name that can be a directory of /vmi/<node>/ beside the node's own .cloudvmi: printable
// ASCII but '/', not "." or "..", not hidden.
bool usable_name(const std::string& name) {
    if (name.empty() || name.size() > 255 || name[0] == '.') return false;
    for (unsigned char c : name) {
        if (c <= 0x20 || c >= 0x7f || c == '/') return false;
    }
    return true;
}

// libvirt's canonical form: 36 characters, hex digits and dashes (it names files).
bool usable_uuid(const std::string& uuid) {
    if (uuid.size() != 36) return false;
    for (size_t i = 0; i < uuid.size(); ++i) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? uuid[i] != '-' : !std::isxdigit(static_cast<unsigned char>(uuid[i])))
            return false;
    }
    return true;
}

bool same(const std::vector<DomainInfo>& a, const std::vector<DomainInfo>& b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i) {
        const auto &x = a[i], &y = b[i];
        if (x.description.name != y.description.name || x.description.uuid != y.description.uuid ||
            x.description.gdb != y.description.gdb || x.description.qmp != y.description.qmp ||
            x.id != y.id || x.state != y.state || x.state_reason != y.state_reason)
            return false;
    }
    return true;
}

}  // namespace

bool is_remote_uri(const std::string& uri) {
    size_t scheme = uri.find("://");
    if (scheme == std::string::npos) return false;
    std::string rest = uri.substr(scheme + 3);
    std::string authority = rest.substr(0, rest.find('/'));
    authority =
        authority.substr(authority.find('@') == std::string::npos ? 0 : authority.find('@') + 1);
    return !authority.empty();
}

const char* to_string(NodeState state) {
    switch (state) {
        case NodeState::kConnecting:
            return "connecting";
        case NodeState::kConnected:
            return "connected";
        case NodeState::kAway:
            break;
    }
    return "away";
}

std::string NodeStatus::describe() const {
    std::string out = strformat("%s, %zu domains", to_string(state), domains);
    if (!error.empty()) out += " (" + error + ")";
    return out;
}

// What libvirt's callbacks reach: cut off when the node goes, since libvirt may still run
// a callback (or free its opaque) after deregistration, from its event loop thread.
struct CallbackTarget {
    std::mutex mutex;  // taken before LibvirtNode::mutex_, never after
    LibvirtNode* node = nullptr;
};

struct LibvirtNode::Connection {
    virConnectPtr conn = nullptr;
    int lifecycle_id = -1;  // its opaque is libvirt's to free (free_target)
    bool close_registered = false;
    std::shared_ptr<CallbackTarget> target;
    std::unique_ptr<std::shared_ptr<CallbackTarget>> close_opaque;
};

namespace {

void free_target(void* opaque) {
    delete static_cast<std::shared_ptr<CallbackTarget>*>(opaque);
}

void* new_opaque(const std::shared_ptr<CallbackTarget>& target) {
    return new std::shared_ptr<CallbackTarget>(target);
}

template <class F>
void with_node(void* opaque, F f) {
    auto& target = **static_cast<std::shared_ptr<CallbackTarget>*>(opaque);
    std::lock_guard lock(target.mutex);
    if (target.node != nullptr) f(*target.node);
}

void close_callback(virConnectPtr, int reason, void* opaque) {
    with_node(opaque, [reason](LibvirtNode& n) { n.on_close(reason); });
}

int lifecycle_callback(virConnectPtr, virDomainPtr, int, int, void* opaque) {
    with_node(opaque, [](LibvirtNode& n) { n.on_lifecycle(); });
    return 0;
}

}  // namespace

std::unique_ptr<LibvirtNode> LibvirtNode::start(NodeOptions options, Listener listener) {
    ensure_event_loop();
    std::unique_ptr<LibvirtNode> node(new LibvirtNode(std::move(options), std::move(listener)));
    node->thread_ = std::thread([n = node.get()] { n->run(); });
    return node;
}

LibvirtNode::LibvirtNode(NodeOptions options, Listener listener)
    : options_(std::move(options)), listener_(std::move(listener)) {
    status_.since = Clock::now();
}

LibvirtNode::~LibvirtNode() {
    {
        std::lock_guard lock(mutex_);
        stop_ = true;
    }
    changed_.notify_all();
    if (thread_.joinable()) thread_.join();
}

NodeStatus LibvirtNode::status() const {
    std::lock_guard lock(mutex_);
    return status_;
}

std::vector<DomainInfo> LibvirtNode::domains() const {
    std::lock_guard lock(mutex_);
    return domains_;
}

uint64_t LibvirtNode::generation() const {
    std::lock_guard lock(mutex_);
    return generation_;
}

bool LibvirtNode::wait_for_generation(uint64_t after, Deadline deadline) const {
    std::unique_lock lock(mutex_);
    return changed_.wait_until(lock, deadline.when(), [&] { return generation_ > after; });
}

void LibvirtNode::on_lifecycle() {
    std::lock_guard lock(mutex_);
    dirty_ = true;
    changed_.notify_all();
}

void LibvirtNode::on_close(int reason) {
    std::lock_guard lock(mutex_);
    closed_ = true;
    status_.error = reason == VIR_CONNECT_CLOSE_REASON_KEEPALIVE ? "keepalive timed out"
                    : reason == VIR_CONNECT_CLOSE_REASON_EOF     ? "connection closed"
                    : reason == VIR_CONNECT_CLOSE_REASON_ERROR   ? "connection error"
                                                                 : "closed by the client";
    changed_.notify_all();
}

ErrorOr<void> LibvirtNode::connect_locked(std::unique_lock<std::mutex>& lock) {
    lock.unlock();
    auto c = std::make_unique<Connection>();
    c->target = std::make_shared<CallbackTarget>();
    c->target->node = this;
    connection_ = std::move(c);
    Connection& conn = *connection_;
    conn.conn = virConnectOpen(options_.uri.c_str());
    ErrorOr<void> result;
    if (conn.conn == nullptr) {
        result = std::unexpected(libvirt_error(ENOTCONN, "connecting to " + options_.uri));
    } else {
        // Not every driver has keepalive (local ones do not need it).
        (void)virConnectSetKeepAlive(conn.conn, options_.keepalive_interval,
                                     options_.keepalive_count);
        // The close callback's opaque stays ours (libvirt 9 does not free it on unregister):
        // freed after the connection is closed, when no callback can run any more.
        conn.close_opaque = std::make_unique<std::shared_ptr<CallbackTarget>>(conn.target);
        conn.close_registered =
            virConnectRegisterCloseCallback(conn.conn, close_callback, conn.close_opaque.get(),
                                            nullptr) == 0;
        void* lifecycle_opaque = new_opaque(conn.target);
        conn.lifecycle_id = virConnectDomainEventRegisterAny(
            conn.conn, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
            VIR_DOMAIN_EVENT_CALLBACK(lifecycle_callback), lifecycle_opaque, free_target);
        if (conn.lifecycle_id < 0) {
            free_target(lifecycle_opaque);
            result = std::unexpected(libvirt_error(EIO, "subscribing to domain events"));
        }
    }
    if (!result) disconnect();
    lock.lock();
    return result;
}

void LibvirtNode::disconnect() {
    if (!connection_) return;
    Connection& c = *connection_;
    if (c.conn != nullptr) {
        if (c.lifecycle_id >= 0) (void)virConnectDomainEventDeregisterAny(c.conn, c.lifecycle_id);
        if (c.close_registered) (void)virConnectUnregisterCloseCallback(c.conn, close_callback);
        virConnectClose(c.conn);
    }
    {
        std::lock_guard lock(c.target->mutex);
        c.target->node = nullptr;
    }
    connection_.reset();
}

ErrorOr<std::vector<DomainInfo>> LibvirtNode::list_domains() {
    virConnectPtr conn = connection_->conn;
    virDomainPtr* doms = nullptr;
    int n = virConnectListAllDomains(conn, &doms, VIR_CONNECT_LIST_DOMAINS_ACTIVE);
    if (n < 0) return std::unexpected(libvirt_error(EIO, "listing the domains"));
    std::vector<DomainInfo> out;
    for (int i = 0; i < n; ++i) {
        virDomainPtr d = doms[i];
        DomainInfo info;
        int state = 0, reason = 0;
        char* xml = virDomainGetXMLDesc(d, 0);
        bool ok = xml != nullptr && virDomainGetState(d, &state, &reason, 0) == 0;
        const char* name = virDomainGetName(d);
        std::string shown = name != nullptr ? name : "?";
        if (ok) {
            auto parsed = parse_domain_xml(xml);
            if (parsed) {
                info.description = std::move(*parsed);
            } else {
                LOG_WARN("node %s: domain %s: %s", options_.name.c_str(), shown.c_str(),
                         parsed.error().describe().c_str());
                ok = false;
            }
        } else {
            // It may have stopped between the listing and now: the next event lists again.
            LOG_DEBUG("node %s: domain %s: %s", options_.name.c_str(), shown.c_str(),
                      virGetLastErrorMessage());
        }
        std::free(xml);
        unsigned id = virDomainGetID(d);
        virDomainFree(d);
        if (!ok) continue;
        if (!usable_name(info.description.name)) {
            LOG_WARN("node %s: a domain named \"%s\" cannot be shown as a directory",
                     options_.name.c_str(), printable(info.description.name).c_str());
            continue;
        }
        if (!usable_uuid(info.description.uuid)) {
            LOG_WARN("node %s: domain %s has an unusable uuid \"%s\"", options_.name.c_str(),
                     info.description.name.c_str(), printable(info.description.uuid).c_str());
            continue;
        }
        info.id = id == static_cast<unsigned>(-1) ? -1 : static_cast<int>(id);
        info.state = state_name(state);
        if (state == VIR_DOMAIN_PAUSED) info.state_reason = paused_reason(reason);
        out.push_back(std::move(info));
    }
    std::free(doms);
    std::sort(out.begin(), out.end(), [](const DomainInfo& a, const DomainInfo& b) {
        return a.description.name < b.description.name;
    });
    return out;
}

void LibvirtNode::refresh(std::unique_lock<std::mutex>& lock) {
    dirty_ = false;
    lock.unlock();
    // The cheapest call that reaches the daemon: the link's own round-trip time.
    auto probed = Clock::now();
    unsigned long version = 0;
    bool answered = connection_ && virConnectGetLibVersion(connection_->conn, &version) == 0;
    double rtt = answered ? elapsed_ms(probed) : -1;
    auto started = Clock::now();
    auto listed = list_domains();
    double ms = elapsed_ms(started);
    lock.lock();
    status_.rtt_ms = rtt;
    if (!listed) {
        status_.error = listed.error().describe();
        LOG_WARN("node %s: %s", options_.name.c_str(), status_.error.c_str());
        // A dead link shows up here before the close callback: let the loop decide. (Asked
        // without mutex_: libvirt's callbacks take it on the event loop thread.)
        lock.unlock();
        bool alive = connection_ && virConnectIsAlive(connection_->conn) == 1;
        lock.lock();
        if (!alive) closed_ = true;
        return;
    }
    bool changed = !same(*listed, domains_) || generation_ == 0;
    domains_ = std::move(*listed);
    status_.domains = domains_.size();
    status_.refresh_ms = ms;
    ++status_.refreshes;
    if (status_.state == NodeState::kConnected) status_.error.clear();
    // The listener first: whoever waits for this listing finds its effects done.
    if (changed && listener_) {
        auto copy = domains_;
        lock.unlock();
        listener_(copy);
        lock.lock();
    }
    ++generation_;
    changed_.notify_all();
}

void LibvirtNode::mark_away_locked(std::string why) {
    if (status_.state != NodeState::kAway) status_.since = Clock::now();
    status_.state = NodeState::kAway;
    status_.error = std::move(why);
    ++generation_;
    changed_.notify_all();
}

void LibvirtNode::run() {
    Millis backoff = options_.retry_min;
    std::unique_lock lock(mutex_);
    while (!stop_) {
        if (!connection_) {
            auto c = connect_locked(lock);
            if (!c) {
                mark_away_locked(c.error().describe());  // observers see the failed attempt too
                LOG_WARN("node %s: %s; again in %lld ms", options_.name.c_str(),
                         status_.error.c_str(), static_cast<long long>(backoff.count()));
                changed_.wait_for(lock, backoff, [&] { return stop_; });
                backoff = std::min(backoff * 2, options_.retry_max);
                continue;
            }
            backoff = options_.retry_min;
            if (char* resolved = virConnectGetURI(connection_->conn)) {
                status_.resolved_uri = resolved;
                std::free(resolved);
            } else {
                status_.resolved_uri = options_.uri;
            }
            status_.remote = is_remote_uri(status_.resolved_uri);
            status_.state = NodeState::kConnected;
            status_.since = Clock::now();
            status_.error.clear();
            ++status_.connects;
            closed_ = false;
            dirty_ = true;
            LOG_INFO("node %s: connected to %s", options_.name.c_str(), options_.uri.c_str());
        }
        if (dirty_) refresh(lock);
        if (!closed_) {
            bool woken =
                changed_.wait_for(lock, kResyncEvery, [&] { return stop_ || dirty_ || closed_; });
            if (!woken) dirty_ = true;
        }
        if (closed_ && !stop_) {
            std::string why = status_.error.empty() ? "connection closed" : status_.error;
            lock.unlock();
            disconnect();
            lock.lock();
            closed_ = false;
            mark_away_locked(why);
            LOG_WARN("node %s: %s; reconnecting", options_.name.c_str(), why.c_str());
        }
    }
    lock.unlock();
    disconnect();
}

}  // namespace cloudvmi::nodes
