#include "fs/filesystem.h"

#include <unistd.h>

#include "common/log.h"

namespace cloudvmi::fs {

Filesystem::Filesystem(Config config, SessionOptions base)
    : config_(std::move(config)),
      policies_(std::make_unique<PolicyStore>("")),
      gate_(std::make_unique<ChangeGate>(*policies_, nullptr)) {
    for (const auto& vm : config_.vms) {
        auto v = std::make_unique<Vm>(config_.node, vm, base);
        v->set_cache(config_.cache);
        v->set_allow_consuming_reads(config_.allow_consuming_reads);
        v->set_gate(gate_.get());
        vms_.push_back(std::move(v));
    }
    inodes_ = std::make_unique<InodeTable>(make_root_dir(*this));
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
    for (const auto& vm : vms_)
        vm->set_gate(gate_.get());
}

Vm* Filesystem::find_vm(const std::string& name) const {
    for (const auto& vm : vms_) {
        if (vm->name() == name) return vm.get();
    }
    return nullptr;
}

void Filesystem::reap_queues() {
    auto now = Clock::now();
    for (const auto& vm : vms_)
        vm->executor().reap(now);
}

void Filesystem::shutdown() {
    if (shut_down_) return;
    shut_down_ = true;
    for (const auto& vm : vms_)
        vm->shutdown();
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
