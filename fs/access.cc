#include "fs/access.h"

#include <algorithm>

namespace cloudvmi::fs {

bool may_access(const AccessRule& rule, const Caller& caller, Exposure exposure) {
    if (caller.uid == 0) return true;
    if (exposure == Exposure::kKernelAddresses || !rule.operators) return false;
    gid_t ops = *rule.operators;
    return caller.gid == ops ||
           std::find(caller.groups.begin(), caller.groups.end(), ops) != caller.groups.end();
}

}  // namespace cloudvmi::fs
