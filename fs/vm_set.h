// The VMs of one node directory, /vmi/<node>/: the configuration's hand-listed VMs, or a
// libvirt node's running domains, which come and go while the mount lives.
//
// Node classes hold plain references to their Vm, and the kernel may still name a VM's
// inodes after its domain stopped: a VM that leaves the set is shut down (its session
// detached, its queue answering ESHUTDOWN) and retired, never freed before the mount ends.
// A domain that comes back gets a fresh Vm. Memory grows with the number of distinct
// domain starts seen, a few KiB each.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include "fs/vm.h"

namespace cloudvmi::fs {

// One VM as its node describes it: its configuration and the session settings to use.
struct VmSpec {
    VmConfig config;
    SessionOptions options;  // gdb_endpoint and qmp are taken from `config`
    // Which run of the VM this is (libvirt: uuid and domain id): a VM whose identity
    // changed was restarted between two listings and gets a new Vm.
    std::string identity;
};

class VmSet {
  public:
    // Sets the new VMs up (cache, gate, ...) before they serve.
    using Prepare = std::function<void(Vm&)>;

    VmSet(std::string node, Prepare prepare);
    ~VmSet();

    const std::string& node() const { return node_; }
    Vm* find(const std::string& name) const;
    std::vector<Vm*> list() const;  // by name

    struct Change {
        std::vector<std::string> added, removed;
        bool empty() const { return added.empty() && removed.empty(); }
    };
    // Makes the live set `specs`: a VM whose name is new, or whose configuration or
    // identity changed, gets a new Vm; one no longer listed is shut down and retired.
    Change update(const std::vector<VmSpec>& specs);

    // Applies `f` to every VM, live and retired (set_gate, reap of queues).
    void for_each(const std::function<void(Vm&)>& f) const;
    // Shuts every VM down (the mount ends).
    void shutdown();

  private:
    std::string node_;
    Prepare prepare_;
    // Lock order: mutex_ before any Vm lock; never held across a shutdown (which detaches
    // a guest and may take seconds).
    mutable std::shared_mutex mutex_;
    struct Live {
        std::unique_ptr<Vm> vm;
        std::string identity;
    };
    std::map<std::string, Live> live_;
    std::vector<std::unique_ptr<Vm>> retired_;
};

}  // namespace cloudvmi::fs
