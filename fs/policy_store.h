// The policy in force for the mount. Loaded at mount time (a broken file stops the mount),
// then reloaded on SIGHUP or a write to /vmi/.cloudvmi/reload: a broken file then keeps
// the policy in force, and the failure shows in the log and in
// /vmi/.cloudvmi/policy-status.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"
#include "policy/policy.h"

namespace cloudvmi::fs {

class PolicyStore {
  public:
    // `path` "" means the built-in policy (reads allowed, changes denied).
    explicit PolicyStore(std::string path);

    // The first load: an error if the file cannot be used.
    ErrorOr<void> load();
    // Later loads: the old policy stays on failure. Returns whether the new one took.
    bool reload();

    std::shared_ptr<policy::Policy> current() const;
    // "policy: FILE (N rules), loaded ...", and the last failure if there was one.
    std::string status_text() const;

  private:
    std::string path_;
    mutable std::mutex mutex_;  // guards everything below; a leaf lock
    std::shared_ptr<policy::Policy> policy_;
    std::chrono::system_clock::time_point loaded_at_;
    unsigned reloads_ = 0;
    unsigned failures_ = 0;
    std::string last_error_;
};

}  // namespace cloudvmi::fs
