// Node attributes on the wire between `cloudvmi serve` and a mount (remote/wire.h): what a
// remote node's directory entries and files carry, checked on arrival like any input
// from another host.
#pragma once

#include "common/error.h"
#include "fs/node.h"
#include "remote/wire.h"

namespace cloudvmi::fs {

// What the mount needs to stand in for a node of another host.
struct RemoteAttr {
    NodeAttr attr;
    double entry_timeout = 1;
    Exposure exposure = Exposure::kGuestData;
};

// Times on the wire: nanoseconds since the epoch (a negative remainder normalised).
int64_t ns_of(const timespec& t);
timespec timespec_of(int64_t ns);

// The path of `name` in the directory at `dir` ("" is the served node directory).
std::string child_path(const std::string& dir, const std::string& name);

remote::Message encode_remote_attr(const NodeAttr& attr, const Node& node);
// Refuses file types that do not exist and absurd cache lifetimes (EPROTO).
ErrorOr<RemoteAttr> decode_remote_attr(const remote::Message& m);

// The caller of a request, as the remote node's policy and audit trail see it (with its
// process name, read here: the pid means nothing there).
remote::Message encode_caller(const Caller& who);
ErrorOr<Caller> decode_caller(const remote::Message& m);

}  // namespace cloudvmi::fs
