#include "fs/vm_set.h"

#include <mutex>

#include "common/log.h"

namespace cloudvmi::fs {

VmSet::VmSet(std::string node, Prepare prepare)
    : node_(std::move(node)), prepare_(std::move(prepare)) {}

VmSet::~VmSet() {
    shutdown();
}

Vm* VmSet::find(const std::string& name) const {
    std::shared_lock lock(mutex_);
    auto it = live_.find(name);
    return it == live_.end() ? nullptr : it->second.vm.get();
}

std::vector<Vm*> VmSet::list() const {
    std::shared_lock lock(mutex_);
    std::vector<Vm*> out;
    for (const auto& [name, live] : live_)
        out.push_back(live.vm.get());
    return out;
}

VmSet::Change VmSet::update(const std::vector<VmSpec>& specs) {
    Change change;
    std::vector<Vm*> leaving;
    {
        std::unique_lock lock(mutex_);
        std::map<std::string, const VmSpec*> wanted;
        for (const auto& s : specs)
            wanted[s.config.name] = &s;
        for (auto it = live_.begin(); it != live_.end();) {
            auto w = wanted.find(it->first);
            const VmConfig& had = it->second.vm->config();
            bool same = w != wanted.end() && w->second->config.gdb == had.gdb &&
                        w->second->config.qmp == had.qmp &&
                        w->second->identity == it->second.identity;
            if (same) {
                ++it;
                continue;
            }
            change.removed.push_back(it->first);
            leaving.push_back(it->second.vm.get());
            retired_.push_back(std::move(it->second.vm));
            it = live_.erase(it);
        }
        for (const auto& [name, spec] : wanted) {
            if (live_.count(name)) continue;
            auto vm = std::make_unique<Vm>(node_, spec->config, spec->options);
            if (prepare_) prepare_(*vm);
            change.added.push_back(name);
            live_[name] = Live{std::move(vm), spec->identity};
        }
    }
    // Outside the lock: a detach may wait for the guest.
    for (Vm* vm : leaving) {
        LOG_INFO("node %s: VM %s is gone; its session ends", node_.c_str(), vm->name().c_str());
        vm->shutdown();
    }
    return change;
}

void VmSet::for_each(const std::function<void(Vm&)>& f) const {
    std::shared_lock lock(mutex_);
    for (const auto& [name, live] : live_)
        f(*live.vm);
    for (const auto& vm : retired_)
        f(*vm);
}

void VmSet::shutdown() {
    std::vector<Vm*> all;
    {
        std::shared_lock lock(mutex_);
        for (const auto& [name, live] : live_)
            all.push_back(live.vm.get());
    }
    for (Vm* vm : all)
        vm->shutdown();
}

}  // namespace cloudvmi::fs
