// The errno a FUSE reply carries for an Error: the one mapping at the FUSE boundary.
#pragma once

#include <cerrno>

#include "common/error.h"

namespace cloudvmi::fs {

// The kernel takes 1..511 only: a reply outside that range is rejected and the caller waits
// forever in D state. A guest (untrusted) or a bug could produce any number; it becomes EIO.
constexpr int kMaxReplyErrno = 511;

inline int fuse_errno(const Error& e) {
    int code = e.code();
    return code >= 1 && code <= kMaxReplyErrno ? code : EIO;
}

}  // namespace cloudvmi::fs
