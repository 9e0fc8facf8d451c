// One configured VM of the mount: its session, its request queue and its statistics.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fs/change_gate.h"
#include "fs/config.h"
#include "fs/vm_executor.h"
#include "redirector/session/guest_changes.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi::fs {

struct VmStats {
    uint64_t requests = 0;
    uint64_t errors = 0;        // failures of our own (guest errno answers are not errors)
    uint64_t guest_errors = 0;  // answers carrying a guest errno (ENOENT, EACCES...)
    double p50_ms = 0, p90_ms = 0, p99_ms = 0, max_ms = 0;
    size_t queued = 0;
};

// What the caller of a VM request sees of an error, by its kind (Error::Origin): the
// guest's errno, our deliberate refusals (Error::refusal: caps, unsafe changes) and "not
// now" answers (Error::unavailable: EAGAIN, EBUSY) unchanged; every other failure of
// ours is ENOTCONN (the VM cannot be reached) or EIO, whatever its errno.
Error vm_error(const Error& e);

class Vm {
  public:
    Vm(std::string node, const VmConfig& config, const SessionOptions& base);
    ~Vm();

    const std::string& name() const { return config_.name; }
    const std::string& node() const { return node_; }
    // Unique in the mount ("node/name": neither may contain '/'), for inode keys.
    std::string key() const { return node_ + "/" + config_.name; }
    const VmConfig& config() const { return config_; }
    GuestSession& session() { return *session_; }
    GuestFileOps& files() { return files_; }
    GuestChanges& changes() { return changes_; }
    // Where this VM's changes (and reads) are decided and audited; the built-in policy
    // (reads allowed, changes denied, no audit trail) until the mount sets one.
    ChangeGate& gate() const;
    void set_gate(ChangeGate* gate) { gate_ = gate; }
    ChangeScope scope() const { return ChangeScope{node_, config_.name}; }
    VmExecutor& executor() { return executor_; }
    const CacheConfig& cache() const { return cache_; }
    void set_cache(const CacheConfig& c) { cache_ = c; }
    bool allow_consuming_reads() const { return allow_consuming_reads_; }
    void set_allow_consuming_reads(bool allow) { allow_consuming_reads_ = allow; }

    // Each finished request: its duration and outcome.
    void record(double ms, const Error* error);
    VmStats stats() const;

    // Stops the queue (answering what is left with ESHUTDOWN) and detaches the guest.
    void shutdown();

  private:
    std::string node_;
    VmConfig config_;
    CacheConfig cache_;
    bool allow_consuming_reads_ = false;
    std::unique_ptr<GuestSession> session_;
    GuestFileOps files_;
    GuestChanges changes_;
    ChangeGate* gate_ = nullptr;
    VmExecutor executor_;

    mutable std::mutex stats_mutex_;  // guards the counters below; a leaf lock
    uint64_t requests_ = 0;
    uint64_t errors_ = 0;
    uint64_t guest_errors_ = 0;
    std::vector<double> recent_ms_;  // ring of the last latencies
    size_t recent_next_ = 0;
    double max_ms_ = 0;
};

}  // namespace cloudvmi::fs
