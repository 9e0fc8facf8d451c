// `cloudvmi serve --stdio`: one node directory of this host's tree, served to a mount on
// another host over a byte stream (remote/wire.h), as sftp-server serves sshfs.
//
// Each request names a path below the node directory (or a handle opened earlier) and is
// executed as the FUSE server executes its requests: on the VM's queue when it touches a
// guest, at once otherwise, with this host's policy deciding and auditing every change.
// Many requests are in flight; their answers go out as they finish.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fs/filesystem.h"

namespace cloudvmi::fs {

// The first `want` bytes of an open file, as an open sends them along. `eof` only when a
// read came back empty: a short read is not the end (seq_file gives a page at a time).
// nullopt when the first read failed.
struct FileHead {
    std::vector<uint8_t> data;
    bool eof = false;
};
std::optional<FileHead> read_head(FileHandle& handle, uint64_t want);

// Serves `node` of `fs` to the peer on in_fd/out_fd until it hangs up. 0 when it ended
// the connection, 1 after a protocol error (reported on stderr, which ssh forwards).
int serve_wire(Filesystem& fs, const std::string& node, int in_fd, int out_fd);

}  // namespace cloudvmi::fs
