// The applications' only view of the cloud: the /vmi tree, read and written as plain files,
// as any shell script would (no libcloudvmi, no socket to the mount). Each error carries the
// errno the mount (and behind it the guest) returned, with the path.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace cloudvmi::apps {

struct VmRef {
    std::string node;
    std::string name;
    std::string path;  // MOUNT/node/name
    std::string id() const { return node + "/" + name; }
};

// The mount point: $CLOUDVMI_MOUNT, else /vmi.
std::string default_mount();

// Whether the VM matches one of `patterns` (all VMs when there are none). A pattern with a
// '/' is matched against "node/vm", one without against the VM's name; shell globs.
bool vm_selected(const VmRef& vm, const std::vector<std::string>& patterns);

// Every VM of every node under `mount`, sorted by node then name, that `patterns` select.
// ENOTCONN when `mount` is not a cloudvmi mount (it has no .cloudvmi/).
ErrorOr<std::vector<VmRef>> list_vms(const std::string& mount,
                                     const std::vector<std::string>& patterns);

// A whole file, up to `cap` bytes (EFBIG beyond: never a silent prefix).
ErrorOr<std::string> read_file(const std::string& path, size_t cap = 4 << 20);

// The first `cap` bytes of a file (all of it when shorter): for what is only shown.
ErrorOr<std::string> read_prefix(const std::string& path, size_t cap);

// An absolute guest path without empty, "." or ".." components (so that VM + "/root" + path
// stays in the VM's tree).
bool valid_guest_path(std::string_view path);

// Replaces a file's content in one write (as `echo VALUE > FILE` does); creates it with
// `create_mode` when given and absent.
ErrorOr<void> write_file(const std::string& path, std::string_view data,
                         std::optional<mode_t> create_mode = std::nullopt);

// A directory's entry names, without . and ..
ErrorOr<std::vector<std::string>> list_dir(const std::string& path);

// True when `path` exists (stat succeeds); the errno otherwise (ENOENT for absent).
ErrorOr<bool> exists(const std::string& path);

}  // namespace cloudvmi::apps
