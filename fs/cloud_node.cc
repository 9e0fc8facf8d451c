#include "fs/cloud_node.h"

#include "common/log.h"
#include "nodes/domain_gdbserver.h"
#include "redirector/guest/vm_run_state.h"

namespace cloudvmi::fs {

namespace {

// Whether a domain's owner stopped it, from libvirt's view of the domain.
class LibvirtRunState final : public VmRunStateSource {
  public:
    LibvirtRunState(std::weak_ptr<const nodes::LibvirtNode> node, std::string uri,
                    std::string domain)
        : node_(std::move(node)), uri_(std::move(uri)), domain_(std::move(domain)) {}
    std::string describe() const override { return "libvirt " + uri_ + " domain " + domain_; }
    ErrorOr<VmRunState> current(Deadline) override {
        auto node = node_.lock();
        if (!node) return make_error(ESHUTDOWN, "the node's inventory has ended");
        // An old listing would say "running" for a domain its owner paused meanwhile.
        if (node->status().state != nodes::NodeState::kConnected) {
            return std::unexpected(Error::unavailable(
                EAGAIN, "libvirt at " + uri_ + " is not connected: the run state of " + domain_ +
                            " is unknown"));
        }
        for (const auto& d : node->domains()) {
            if (d.description.name != domain_) continue;
            if (d.state == "running" || d.state == "blocked") return VmRunState{true, "running"};
            // Our own gdbstub stops reach libvirt as STOP events it cannot explain.
            if (d.state == "paused" && d.state_reason == "unknown")
                return VmRunState{true, "running"};
            std::string status = d.state;
            if (!d.state_reason.empty()) status += " (" + d.state_reason + ")";
            return VmRunState{false, status};
        }
        return make_error(ENOENT, "libvirt no longer lists domain " + domain_);
    }

  private:
    std::weak_ptr<const nodes::LibvirtNode> node_;
    std::string uri_;
    std::string domain_;
};

}  // namespace

CloudNode::CloudNode(const NodeConfig& config, SessionOptions base, VmSet::Prepare prepare,
                     Changed changed)
    : config_(config),
      base_(std::move(base)),
      changed_(std::move(changed)),
      vms_(config.name, std::move(prepare)) {
    // The first listing may come before start() returns: on_listing waits for this lock.
    std::lock_guard lock(listener_mutex_);
    std::lock_guard inventory_lock(inventory_mutex_);
    inventory_ = nodes::LibvirtNode::start(
        nodes::NodeOptions{.name = config.name, .uri = config.uri},
        [this](const std::vector<nodes::DomainInfo>& domains) { on_listing(domains); });
}

CloudNode::~CloudNode() {
    stop();
}

void CloudNode::stop() {
    {
        std::lock_guard lock(listener_mutex_);
        if (closing_) return;
        closing_ = true;
    }
    // The VMs end while the inventory still answers their run-state questions.
    vms_.shutdown();
    std::shared_ptr<nodes::LibvirtNode> inventory;
    {
        std::lock_guard lock(inventory_mutex_);
        inventory = std::move(inventory_);
        if (inventory) final_status_ = inventory->status();
    }
    inventory.reset();  // joins its thread, outside the lock
}

nodes::NodeStatus CloudNode::status() const {
    std::lock_guard lock(inventory_mutex_);
    return inventory_ ? inventory_->status() : final_status_;
}

void CloudNode::wait_for_first_listing(Deadline deadline) const {
    std::shared_ptr<nodes::LibvirtNode> inventory;
    {
        std::lock_guard lock(inventory_mutex_);
        inventory = inventory_;
    }
    if (inventory) inventory->wait_for_generation(0, deadline);
}

void CloudNode::refuse_remote(VmSpec& spec) const {
    // The sockets its XML names are on that host; one of ours by the same name would be
    // another VM. Listed, never attached to.
    spec.config.gdb = "unix:/nonexistent/remote-domain";
    spec.config.qmp.clear();
    std::string uri = config_.uri;
    spec.options.stub.open = [uri]() -> ErrorOr<void> {
        return refuse(EREMOTE, "the domain runs on the host of " + uri +
                                   "; its gdbstub is reachable only there");
    };
}

void CloudNode::on_demand_stub(const nodes::DomainInfo& d, VmSpec& spec) const {
    std::string path = config_.gdb_dir + "/cloudvmi-" + d.description.uuid + ".gdb";
    spec.config.gdb = "unix:" + path;
    std::string uri = config_.uri, uuid = d.description.uuid, name = d.description.name;
    spec.options.stub.open = [uri, uuid, path]() -> ErrorOr<void> {
        return nodes::set_domain_gdbserver(uri, uuid, "unix:" + path + ",server=on,wait=off");
    };
    spec.options.stub.close = [uri, uuid, name] {
        if (auto r = nodes::set_domain_gdbserver(uri, uuid, "none"); !r)
            LOG_WARN("domain %s: closing its gdbstub: %s", name.c_str(),
                     r.error().describe().c_str());
    };
}

void CloudNode::on_listing(const std::vector<nodes::DomainInfo>& domains) {
    std::lock_guard lock(listener_mutex_);
    if (closing_) return;
    std::shared_ptr<const nodes::LibvirtNode> inventory;
    {
        std::lock_guard inventory_lock(inventory_mutex_);
        inventory = inventory_;
    }
    bool remote = inventory && inventory->status().remote;
    std::vector<VmSpec> specs;
    for (const auto& d : domains) {
        VmSpec spec;
        spec.config.name = d.description.name;
        spec.config.gdb = d.description.gdb;
        spec.config.qmp = d.description.qmp;
        spec.options = base_;
        spec.identity = d.description.uuid + "/" + std::to_string(d.id);
        if (remote) {
            refuse_remote(spec);
        } else if (spec.config.gdb.empty()) {
            on_demand_stub(d, spec);
        }
        if (spec.config.qmp.empty()) {
            std::weak_ptr<const nodes::LibvirtNode> node = inventory;
            std::string uri = config_.uri, name = d.description.name;
            spec.options.watch_run_state = [node, uri,
                                            name]() -> ErrorOr<std::unique_ptr<VmRunStateSource>> {
                return std::make_unique<LibvirtRunState>(node, uri, name);
            };
        }
        specs.push_back(std::move(spec));
    }
    auto change = vms_.update(specs);
    if (!change.empty() && changed_) changed_(config_.name, change);
}

}  // namespace cloudvmi::fs
