#include "fs/cloud_node.h"

#include "common/log.h"
#include "nodes/domain_gdbserver.h"
#include "redirector/guest/vm_run_state.h"

namespace cloudvmi::fs {

namespace {

// Whether a domain's owner stopped it, from libvirt's view of the domain.
class LibvirtRunState final : public VmRunStateSource {
  public:
    LibvirtRunState(const nodes::LibvirtNode& node, std::string domain)
        : node_(node), domain_(std::move(domain)) {}
    std::string describe() const override {
        return "libvirt " + node_.options().uri + " domain " + domain_;
    }
    ErrorOr<VmRunState> current(Deadline) override {
        for (const auto& d : node_.domains()) {
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
    const nodes::LibvirtNode& node_;
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
    inventory_ = nodes::LibvirtNode::start(
        nodes::NodeOptions{.name = config.name, .uri = config.uri},
        [this](const std::vector<nodes::DomainInfo>& domains) { on_listing(domains); });
}

CloudNode::~CloudNode() {
    {
        std::lock_guard lock(listener_mutex_);
        closing_ = true;
    }
    // The VMs end while the inventory still answers their run-state questions.
    vms_.shutdown();
    inventory_.reset();
}

nodes::NodeStatus CloudNode::status() const {
    return inventory_->status();
}

void CloudNode::wait_for_first_listing(Deadline deadline) const {
    inventory_->wait_for_generation(0, deadline);
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
    std::vector<VmSpec> specs;
    for (const auto& d : domains) {
        VmSpec spec;
        spec.config.name = d.description.name;
        spec.config.gdb = d.description.gdb;
        spec.config.qmp = d.description.qmp;
        spec.options = base_;
        if (spec.config.gdb.empty() && !d.description.uuid.empty()) on_demand_stub(d, spec);
        if (spec.config.qmp.empty()) {
            const nodes::LibvirtNode* node = inventory_.get();
            std::string name = d.description.name;
            spec.options.watch_run_state = [node,
                                            name]() -> ErrorOr<std::unique_ptr<VmRunStateSource>> {
                return std::make_unique<LibvirtRunState>(*node, name);
            };
        }
        specs.push_back(std::move(spec));
    }
    auto change = vms_.update(specs);
    if (!change.empty() && changed_) changed_(config_.name, change);
}

}  // namespace cloudvmi::fs
