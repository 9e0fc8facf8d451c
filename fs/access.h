// Who may use the mount: decided by the daemon from the FUSE caller's credentials, so that
// it holds under `-o allow_other` too (the guest's own file modes mean nothing on the host:
// every guest file is read as guest root).
//
// Host root may do everything. Members of the configured operators group (by primary or
// supplementary group) may read the guests' trees, but not the session files that expose
// guest kernel addresses (KASLR bases). Everyone else gets EACCES.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

namespace cloudvmi::fs {

struct Caller {
    uid_t uid = 0;
    gid_t gid = 0;
    std::vector<gid_t> groups;  // supplementary
    pid_t pid = 0;              // for the audit trail
    // A caller on another host (a request served to a remote mount): that host's name and
    // the process's name there; its pid is that host's too. Empty for local callers.
    std::string host;
    std::string comm;
};

// What a node shows.
enum class Exposure {
    kGuestData,        // the guests' trees, the inventory
    kKernelAddresses,  // session files with guest kernel addresses
};

struct AccessRule {
    std::optional<gid_t> operators;  // the operators group, if one is configured
};

bool may_access(const AccessRule& rule, const Caller& caller, Exposure exposure);

}  // namespace cloudvmi::fs
