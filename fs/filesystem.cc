#include "fs/filesystem.h"

#include <unistd.h>

#include "common/log.h"
#include "common/strings.h"

namespace cloudvmi::fs {

namespace {

// Requests to one remote node that may wait on the network at once.
constexpr size_t kRemoteWorkers = 8;

// ssh as a transport: never a prompt (a mount has no terminal), a dead peer noticed within
// 15 s, no agent, X11 or terminal forwarding.
remote::LinkSettings remote_link_settings(const Config& config, const NodeConfig& node) {
    remote::LinkSettings s;
    s.node = node.name;
    s.command = {"ssh", "-T",
                 "-x",  "-a",
                 "-o",  "BatchMode=yes",
                 "-o",  "ServerAliveInterval=5",
                 "-o",  "ServerAliveCountMax=3",
                 "-o",  "ConnectTimeout=10"};
    s.command.insert(s.command.end(), node.ssh_options.begin(), node.ssh_options.end());
    s.command.insert(s.command.end(), {"--", node.ssh, node.remote_command});
    // The remote's own bound for the request, plus the hop.
    s.request_timeout = Millis(config.request_timeout_ms + 5000);
    return s;
}

std::string remote_node_status(const std::string& name, const remote::RemoteLink& link) {
    auto st = link.status();
    const auto& command = link.settings().command;
    return strformat(
        "node: %s\nkind: ssh\nhost: %s\nstate: %s\nsince_s: %.0f\nvms: %lld\nrtt_ms: %.2f\n"
        "connects: %llu\ndrops: %llu\nrequests: %llu\nfailed: %llu\nin_flight: %zu\n"
        "remote_node: %s\nerror: %s\n",
        name.c_str(), command[command.size() - 2].c_str(), remote::to_string(st.state),
        std::chrono::duration<double>(Clock::now() - st.since).count(),
        static_cast<long long>(st.vms), st.rtt_ms, static_cast<unsigned long long>(st.connects),
        static_cast<unsigned long long>(st.drops), static_cast<unsigned long long>(st.requests),
        static_cast<unsigned long long>(st.failed), st.in_flight, st.remote_node.c_str(),
        st.error.c_str());
}

}  // namespace

Filesystem::Filesystem(Config config, SessionOptions base)
    : config_(std::move(config)),
      base_(std::move(base)),
      policies_(std::make_unique<PolicyStore>("")),
      gate_(std::make_unique<ChangeGate>(*policies_, nullptr)) {
    if (!config_.vms.empty() || config_.nodes.empty()) {
        listed_ = std::make_unique<VmSet>(config_.node, [this](Vm& vm) { prepare_vm(vm); });
        std::vector<VmSpec> specs;
        for (const auto& vm : config_.vms)
            specs.push_back(VmSpec{vm, base_});
        listed_->update(specs);
    }
    inodes_ = std::make_unique<InodeTable>(make_root_dir(*this));
}

void Filesystem::prepare_vm(Vm& vm) {
    vm.set_cache(config_.cache);
    vm.set_allow_consuming_reads(config_.allow_consuming_reads);
    vm.set_gate(gate_.get());
}

void Filesystem::start_nodes(CloudNode::Changed changed, Millis first_listing) {
    for (const auto& n : config_.nodes) {
        if (n.remote()) {
            auto peer = std::make_unique<RemotePeer>();
            peer->link = std::make_shared<remote::RemoteLink>(remote_link_settings(config_, n));
            peer->queue = std::make_unique<VmExecutor>("node " + n.name, 512, kRemoteWorkers);
            peer->link->start();
            remotes_[n.name] = std::move(peer);
            continue;
        }
        clouds_.push_back(std::make_unique<CloudNode>(
            n, base_, [this](Vm& vm) { prepare_vm(vm); }, changed));
    }
    Deadline deadline = Deadline::after(first_listing);
    for (const auto& c : clouds_)
        c->wait_for_first_listing(deadline);
    for (const auto& [name, peer] : remotes_)
        peer->link->wait_for_first(deadline);
}

std::vector<std::string> Filesystem::node_names() const {
    std::vector<std::string> out;
    if (listed_) out.push_back(listed_->node());
    for (const auto& n : config_.nodes)
        out.push_back(n.name);
    return out;
}

VmSet* Filesystem::find_node(const std::string& name) const {
    if (listed_ && listed_->node() == name) return listed_.get();
    for (const auto& c : clouds_) {
        if (c->config().name == name) return &c->vms();
    }
    return nullptr;
}

RemotePeer* Filesystem::find_remote(const std::string& name) const {
    auto it = remotes_.find(name);
    return it == remotes_.end() ? nullptr : it->second.get();
}

std::string Filesystem::node_status(const std::string& name) const {
    if (auto* peer = find_remote(name)) return remote_node_status(name, *peer->link);
    if (listed_ && listed_->node() == name)
        return strformat("node: %s\nkind: listed\nstate: connected\nvms: %zu\n", name.c_str(),
                         listed_->list().size());
    for (const auto& c : clouds_) {
        if (c->config().name != name) continue;
        auto st = c->status();
        return strformat(
            "node: %s\nkind: libvirt\nuri: %s\nstate: %s\nsince_s: %.0f\nvms: %zu\n"
            "rtt_ms: %.2f\nlisting_ms: %.1f\nlistings: %llu\nconnects: %llu\nerror: %s\n",
            name.c_str(), c->config().uri.c_str(), nodes::to_string(st.state),
            std::chrono::duration<double>(Clock::now() - st.since).count(), st.domains, st.rtt_ms,
            st.refresh_ms, static_cast<unsigned long long>(st.refreshes),
            static_cast<unsigned long long>(st.connects), st.error.c_str());
    }
    return "node: " + name + "\nstate: not started\n";
}

std::string Filesystem::nodes_table() const {
    std::string out;
    for (const auto& name : node_names())
        out += node_status(name) + "\n";
    return out;
}

Filesystem::~Filesystem() {
    shutdown();
}

ErrorOr<Governance> load_governance(const Config& config) {
    Governance g;
    std::string path = config.policy.value_or("");
    if (!config.policy && ::access(kDefaultPolicyPath, F_OK) == 0) path = kDefaultPolicyPath;
    g.policies = std::make_unique<PolicyStore>(path);
    TRY(g.policies->load());
    AuditOptions audit;
    audit.path = config.audit.file;
    audit.max_bytes = config.audit.max_bytes;
    audit.keep = config.audit.keep;
    audit.syslog = config.audit.syslog;
    g.audit = TRY_CTX(AuditLog::open(audit), "audit log " + audit.path);
    return g;
}

void Filesystem::set_governance(Governance governance) {
    policies_ = std::move(governance.policies);
    audit_ = std::move(governance.audit);
    gate_ = std::make_unique<ChangeGate>(*policies_, audit_.get());
    for (VmSet* set : sets())
        set->for_each([this](Vm& vm) { vm.set_gate(gate_.get()); });
}

std::vector<VmSet*> Filesystem::sets() const {
    std::vector<VmSet*> out;
    if (listed_) out.push_back(listed_.get());
    for (const auto& c : clouds_)
        out.push_back(&c->vms());
    return out;
}

Vm* Filesystem::find_vm(const std::string& name) const {
    for (VmSet* set : sets()) {
        if (Vm* vm = set->find(name)) return vm;
    }
    return nullptr;
}

std::vector<Vm*> Filesystem::all_vms() const {
    std::vector<Vm*> out;
    for (VmSet* set : sets()) {
        auto vms = set->list();
        out.insert(out.end(), vms.begin(), vms.end());
    }
    return out;
}

void Filesystem::reap_queues() {
    auto now = Clock::now();
    for (VmSet* set : sets())
        set->for_each([now](Vm& vm) { vm.executor().reap(now); });
    for (const auto& [name, peer] : remotes_)
        peer->queue->reap(now);
}

void Filesystem::shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    // Stopped, not freed: node objects the kernel still names refer to the VMs until the
    // Filesystem goes.
    for (const auto& c : clouds_)
        c->stop();
    // The links first: their pending calls end (ESHUTDOWN), then the queues' workers.
    for (const auto& [name, peer] : remotes_)
        peer->link->stop();
    for (const auto& [name, peer] : remotes_)
        peer->queue->stop(ESHUTDOWN);
    if (listed_) listed_->shutdown();
    LOG_INFO("all guests detached");
}

SessionOptions Filesystem::session_options(const Config& config, const std::string& guardian) {
    SessionOptions o;
    o.state_dir = config.state_dir;
    o.guardian_program = guardian;
    Millis budget(config.request_timeout_ms);
    // Every wait inside one request stays within the request's budget.
    o.client.connect_timeout = std::min(budget, Millis(3000));
    o.client.request_timeout = std::min(budget, Millis(3000));
    o.shadow.attach_timeout = Millis(config.attach_timeout_ms);
    o.shadow.acquire_timeout = std::min(budget, Millis(3000));
    o.shadow.batch_timeout = budget;
    o.attach_timeout = budget;
    o.engine = config.engine == "trap" ? EngineKind::kTrap : EngineKind::kMailbox;
    o.mailbox.batch_timeout = budget;
    return o;
}

}  // namespace cloudvmi::fs
