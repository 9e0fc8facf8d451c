// `cloudvmi serve --stdio`: one node directory of this host's tree, served to a mount on
// another host over a byte stream (remote/wire.h), as sftp-server serves sshfs.
//
// Each request names a path below the node directory (or a handle opened earlier) and is
// executed as the FUSE server executes its requests: on the VM's queue when it touches a
// guest, at once otherwise, with this host's policy deciding and auditing every change.
// Many requests are in flight; their answers go out as they finish.
#pragma once

#include <string>

#include "fs/filesystem.h"

namespace cloudvmi::fs {

// Serves `node` of `fs` to the peer on in_fd/out_fd until it hangs up. 0 when it ended
// the connection, 1 after a protocol error (reported on stderr, which ssh forwards).
int serve_wire(Filesystem& fs, const std::string& node, int in_fd, int out_fd);

}  // namespace cloudvmi::fs
