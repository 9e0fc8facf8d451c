// The /vmi tree as a whole: configuration, nodes, VMs and inode numbers.
//
// /vmi/<node>/<vm>/{proc,sys,root,.cloudvmi}. The nodes are the configuration's
// hand-listed VMs (under its node: name) and each libvirt node (nodes:), whose VMs follow
// its running domains once start_nodes() was called. Owns the VMs (and through them the
// guest sessions); shutdown() detaches every guest.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "fs/audit_log.h"
#include "fs/change_gate.h"
#include "fs/cloud_node.h"
#include "fs/config.h"
#include "fs/inode_table.h"
#include "fs/node.h"
#include "fs/policy_store.h"
#include "fs/vm.h"
#include "fs/vm_set.h"
#include "redirector/session/guest_session.h"
#include "remote/remote_link.h"

namespace cloudvmi::fs {

// The policy and the audit trail of a mount, loaded before it serves (errors then reach
// the terminal).
struct Governance {
    std::unique_ptr<PolicyStore> policies;
    std::unique_ptr<AuditLog> audit;
};
ErrorOr<Governance> load_governance(const Config& config);

// A node on another host: the link to its server and the queue its requests wait on (a
// few workers: a node that is slow or away holds those, never the mount's FUSE threads).
struct RemotePeer {
    std::shared_ptr<remote::RemoteLink> link;
    std::unique_ptr<VmExecutor> queue;
};

class Filesystem {
  public:
    // `base` carries the session settings common to every VM (state dir, guardian, timeouts).
    // The policy is the built-in one and there is no audit trail until set_governance().
    Filesystem(Config config, SessionOptions base);
    ~Filesystem();
    Filesystem(const Filesystem&) = delete;
    Filesystem& operator=(const Filesystem&) = delete;

    InodeTable& inodes() { return *inodes_; }
    const Config& config() const { return config_; }
    AccessRule access_rule() const { return AccessRule{config_.operators_gid}; }
    // The node directories, in configuration order.
    std::vector<std::string> node_names() const;
    VmSet* find_node(const std::string& name) const;
    // A node on another host (nodes: with ssh:), null for local nodes.
    RemotePeer* find_remote(const std::string& name) const;
    // What /vmi/<node>/.cloudvmi/status and /vmi/.cloudvmi/nodes say of a node.
    std::string node_status(const std::string& name) const;
    std::string nodes_table() const;
    // A VM of any node, by name (the first found); for tests and tools.
    Vm* find_vm(const std::string& name) const;
    std::vector<Vm*> all_vms() const;

    // Connects the libvirt nodes and starts the links to remote ones; `changed` hears of VMs that
    // come and go (the FUSE server forgets what the kernel cached of them). Waits up to
    // `first_listing` for their first listings.
    void start_nodes(CloudNode::Changed changed, Millis first_listing);

    // The policy and the audit trail every VM's changes go through (the mount loads them
    // before it serves).
    void set_governance(Governance governance);
    PolicyStore& policies() { return *policies_; }
    AuditLog* audit() { return audit_.get(); }

    // Answers requests stuck in a VM's queue past their deadline, or interrupted.
    void reap_queues();
    // Ends every guest session; pending requests get ESHUTDOWN. Idempotent.
    void shutdown();

    // Session settings for a mount: request timeout applied to every step of a request.
    static SessionOptions session_options(const Config& config, const std::string& guardian);

  private:
    void prepare_vm(Vm& vm);
    // Every node's VM set: the hand-listed one first, then the libvirt nodes'.
    std::vector<VmSet*> sets() const;

    Config config_;
    SessionOptions base_;
    std::unique_ptr<VmSet> listed_;  // the hand-listed VMs; null when none and nodes exist
    std::vector<std::unique_ptr<CloudNode>> clouds_;
    std::map<std::string, std::unique_ptr<RemotePeer>> remotes_;
    std::unique_ptr<PolicyStore> policies_;
    std::unique_ptr<AuditLog> audit_;
    std::unique_ptr<ChangeGate> gate_;
    std::unique_ptr<InodeTable> inodes_;
    bool shut_down_ = false;
};

// Factories of the node classes (one source file per subtree).
std::shared_ptr<Node> make_root_dir(Filesystem& fs);
std::shared_ptr<Node> make_node_dir(Filesystem& fs, const std::string& node);
std::shared_ptr<Node> make_vm_dir(Vm& vm);
std::shared_ptr<Node> make_session_dir(Vm& vm);
// /vmi/<node>/<vm>/ctl: writes that act on the guest (ctl/kill).
std::shared_ptr<Node> make_control_dir(Vm& vm);
// /vmi/.cloudvmi: the mount's own files (policy-status, reload, nodes).
std::shared_ptr<Node> make_mount_dir(Filesystem& fs);
// /vmi/<node>/.cloudvmi: the node's status.
std::shared_ptr<Node> make_node_info_dir(Filesystem& fs, const std::string& node);
// /vmi/<node>/ of a node on another host.
std::shared_ptr<Node> make_remote_node_dir(Filesystem& fs, RemotePeer& peer,
                                           const std::string& node);
// A read-only file whose text is made at each open.
std::shared_ptr<Node> make_text_file(std::string key, std::function<std::string()> text);

// The guest's own trees, mirrored.
enum class GuestTree { kProc, kSys, kRoot };
// The directory standing for a whole tree (proc/, sys/, root/ of a VM directory).
std::shared_ptr<Node> make_guest_tree_root(Vm& vm, GuestTree tree);

}  // namespace cloudvmi::fs
