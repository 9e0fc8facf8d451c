// A libvirt node of the mount: its inventory (nodes/libvirt_node.h) and the VM set that
// follows it, /vmi/<node>/. A domain whose XML declares no gdbstub gets one opened through
// libvirt's monitor passthrough while a session needs it (nodes/domain_gdbserver.h).
//
// Each listing that changes something updates the set and tells the mount which names
// came and went, so that the kernel forgets what it cached about them. A domain's VM
// connects to the gdbstub its XML declares, and learns whether its owner paused it from
// the domain's -qmp socket when the XML declares one for cloudvmi, else from libvirt's
// view (a pause whose reason libvirt does not know, as our own gdbstub stops show, is
// never taken for the owner's).
#pragma once

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/config.h"
#include "fs/vm_set.h"
#include "nodes/libvirt_node.h"

namespace cloudvmi::fs {

class CloudNode {
  public:
    // Told the names that appeared or disappeared under /vmi/<node>/.
    using Changed = std::function<void(const std::string& node, const VmSet::Change&)>;

    CloudNode(const NodeConfig& config, SessionOptions base, VmSet::Prepare prepare,
              Changed changed);
    ~CloudNode();

    VmSet& vms() { return vms_; }
    // Ends the VMs' sessions, then the inventory; the VMs stay valid objects. Idempotent.
    void stop();
    const NodeConfig& config() const { return config_; }
    nodes::NodeStatus status() const;
    // Waits (bounded) for the inventory's first answer, so a mount shows the node's VMs
    // from its first `ls`.
    void wait_for_first_listing(Deadline deadline) const;

  private:
    void on_listing(const std::vector<nodes::DomainInfo>& domains);
    // A domain whose XML declares no gdbstub gets one through the monitor while a session
    // needs it, listening in gdb_dir (closed again by a clean detach).
    void on_demand_stub(const nodes::DomainInfo& d, VmSpec& spec) const;
    // A domain of a node on another host: listed, and every request refused (EREMOTE).
    void refuse_remote(VmSpec& spec) const;

    NodeConfig config_;
    SessionOptions base_;
    Changed changed_;
    // Lock order: listener_mutex_ before inventory_mutex_. listener_mutex_ is held through
    // a whole listing update (detaches may take seconds); inventory_mutex_ is a leaf.
    mutable std::mutex listener_mutex_;  // taken by on_listing; closing_ set under it
    bool closing_ = false;
    mutable std::mutex inventory_mutex_;  // guards inventory_ and final_status_
    nodes::NodeStatus final_status_;      // what status() says once stopped
    VmSet vms_;
    // Shared with the VMs' run-state views (weakly): a view outliving it says so.
    std::shared_ptr<nodes::LibvirtNode> inventory_;
};

}  // namespace cloudvmi::fs
