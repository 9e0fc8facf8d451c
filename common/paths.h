// Small file-system helpers shared by the mount and the redirector.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace cloudvmi {

// Creates `dir` and its missing parents, each with mode 0700 (state directories hold
// recovery logs and locks that only root should touch).
ErrorOr<void> make_dirs(const std::string& dir);

// make_dirs(dir), then proves `dir` is ours alone: a directory (not a symbolic link),
// owned by the effective user, with no access for group or others. Recovery logs in a
// directory another user can write could be swapped for forged ones; EPERM says which
// check failed and how to fix it.
// `what` names the directory in errors.
ErrorOr<void> ensure_private_dir(const std::string& dir, const char* what = "state directory");

// Opens `path` (in a private directory) with `flags`, creating it with mode 0600 when
// O_CREAT is among them: never through a symbolic link, and only a regular file of the
// effective user with a single link (not a hard link to a file elsewhere).
ErrorOr<UniqueFd> open_private_file(const std::string& path, int flags);

// Writes all of `data` to `fd` (a file or a pipe, blocking), again after EINTR and short
// writes. `what` says what was being written, in errors.
ErrorOr<void> write_all(int fd, std::span<const uint8_t> data, const char* what);

// A process's name as its /proc/PID/comm shows it ("" when gone or unreadable).
std::string process_name(pid_t pid);

}  // namespace cloudvmi
