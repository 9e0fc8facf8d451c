// Symbolic links of a guest, shown so that following them on the host never leaves the VM.
//
// The host kernel resolves a link read through FUSE in the host's namespace: a guest link
// `/srv/x -> /etc/hostname` would open the host's /etc/hostname, `proc/1/root -> /` would
// list the host's /, and `../../..` could climb into other VMs. As sshfs's
// transform_symlinks does, absolute targets (and relative ones that climb above the tree
// they are in) are rewritten relative to the link, into the VM's own tree: into the same
// tree when the target is inside it, else into the VM's root/ (the guest's /). A relative
// target is kept as the guest wrote it only when it climbs (through the link's own parent
// directories) no higher than its tree and has no ".." after a name; otherwise it is
// rewritten from its lexical resolution, so that no chain of links can climb out.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace cloudvmi::fs {

// `tree_top`: the guest path the tree mirrors ("/proc", "/sys" or "/", shown as the VM's
// proc/, sys/ and root/ side by side); `link_path`: the guest path of the link, below
// `tree_top`; `target`: what the guest's readlink returned. ENAMETOOLONG when the result
// would not fit in PATH_MAX.
ErrorOr<std::string> contain_link_target(std::string_view tree_top, std::string_view link_path,
                                         std::string_view target);

}  // namespace cloudvmi::fs
