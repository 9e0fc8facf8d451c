// The one place where the policy decides and the audit trail records.
//
// Every change through the mount comes here from its node (on the VM's queue) before
// anything reaches the guest: a denied change is one audit line and EACCES (EAGAIN when a
// rate limit is used up); an allowed one writes an intent line, fsync'd, then runs, then
// writes its outcome under the same id. An intent that cannot be recorded is no change:
// EIO, and nothing reaches the guest. Reads ask here too, and are audited where a rule
// asks for it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "common/error.h"
#include "fs/access.h"
#include "fs/audit_log.h"
#include "fs/policy_store.h"
#include "policy/policy.h"

namespace cloudvmi::fs {

// One change asked for; see policy::Request for the meaning of each field.
struct ChangeAsk {
    policy::Operation op = policy::Operation::kWrite;
    std::string path;  // guest path
    std::string to;    // rename: the destination (decided too)
    std::string value;
    uint64_t offset = 0;
    uint64_t size = 0;
    int signal = 0;
    std::string target_name;
    std::optional<uid_t> target_uid;
    std::span<const uint8_t> data;  // write: the bytes, for the audit's size and SHA-256
};

// Where a request comes from, besides its caller: the VM it is about.
struct ChangeScope {
    std::string node;
    std::string vm;
};

class ChangeGate {
  public:
    // `audit` may be null (no audit trail: tests of the tree only).
    ChangeGate(PolicyStore& policies, AuditLog* audit) : policies_(policies), audit_(audit) {}

    struct Ticket {
        std::string id;
        std::string line_prefix;  // the intent's fields, repeated in the outcome
    };
    ErrorOr<Ticket> admit(const ChangeScope& scope, const Caller& caller, const ChangeAsk& ask);
    // Records how an admitted change ended.
    void settle(const Ticket& ticket, const Error* error);

    // Decides, runs and records a change: `act` runs only if the policy allows it.
    template <class Act>
    auto apply(const ChangeScope& scope, const Caller& caller, const ChangeAsk& ask, Act&& act)
        -> decltype(act()) {
        auto ticket = TRY(admit(scope, caller, ask));
        auto result = act();
        settle(ticket, result ? nullptr : &result.error());
        return result;
    }

    // EACCES (and a denied line) when no write to `path` can ever be allowed to `caller`:
    // the file is then not even opened for writing.
    ErrorOr<void> check_writable(const ChangeScope& scope, const Caller& caller,
                                 const std::string& path);

    // EACCES unless the policy lets `caller` read `path`.
    ErrorOr<void> check_read(const ChangeScope& scope, const Caller& caller,
                             const std::string& path);

  private:
    PolicyStore& policies_;
    AuditLog* audit_;
};

}  // namespace cloudvmi::fs
