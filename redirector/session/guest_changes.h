// Changes to the guest's files: create, write, truncate, remove, rename, chmod, chown...
//
// Each path is resolved by the guest kernel with openat2(RESOLVE_NO_SYMLINKS |
// RESOLVE_NO_MAGICLINKS): a symlink anywhere on the way, the last component included,
// fails the change with the guest's ELOOP. So what the policy decided about a path is
// what the guest touches, even if the guest swaps a directory for a symlink in between.
// An operation on a name runs on its parent directory opened that way (O_PATH) with the
// *at() syscall that does not follow the name (unlinkat, mkdirat, renameat2, fchownat with
// AT_SYMLINK_NOFOLLOW...); one that needs the file itself (truncate, chmod, setxattr)
// opens the file that way and works on the fd. One batch per change.
//
// Guests without openat2 (Linux before 5.6) get EOPNOTSUPP for every change.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi {

// A time for set_times(): a given one, the guest's "now", or left as it is.
struct GuestTime {
    int64_t sec = 0;
    int64_t nsec = 0;
    static GuestTime now();
    static GuestTime omit();
};

// How a file is opened for a change (the guest's flags are derived from it).
struct WriteMode {
    bool read_too = false;   // O_RDWR instead of O_WRONLY
    bool append = false;     // O_APPEND
    bool truncate = false;   // O_TRUNC
    bool exclusive = false;  // O_EXCL (create only)
};

struct RenameMode {
    bool no_replace = false;  // RENAME_NOREPLACE
    bool exchange = false;    // RENAME_EXCHANGE
};

class GuestChanges {
  public:
    explicit GuestChanges(GuestSession& session) : session_(session) {}

    // Opens an existing file for writing; never creates one, never blocks (a FIFO without
    // a reader is ENXIO).
    ErrorOr<GuestFd> open_for_writing(const std::string& path, WriteMode mode);
    struct Created {
        GuestFd fd;
        GuestStat stat;
    };
    // Creates a file (or opens it if it exists, unless `exclusive`) and opens it.
    ErrorOr<Created> create(const std::string& path, WriteMode how, uint32_t mode);
    ErrorOr<GuestStat> mkdir(const std::string& path, uint32_t mode);
    ErrorOr<void> unlink(const std::string& path);
    ErrorOr<void> rmdir(const std::string& path);
    ErrorOr<void> rename(const std::string& from, const std::string& to, RenameMode mode);
    ErrorOr<GuestStat> symlink(const std::string& target, const std::string& path);
    ErrorOr<void> chmod(const std::string& path, uint32_t mode);
    // nullopt leaves that id as it is.
    ErrorOr<void> chown(const std::string& path, std::optional<uint32_t> uid,
                        std::optional<uint32_t> gid);
    ErrorOr<void> truncate(const std::string& path, uint64_t size);
    ErrorOr<void> set_times(const std::string& path, GuestTime atime, GuestTime mtime);
    ErrorOr<void> setxattr(const std::string& path, const std::string& name,
                           const std::vector<uint8_t>& value, int flags);

  private:
    GuestSession& session_;
};

// "/a/b/c" -> {"/a/b", "c"}; "/c" -> {"/", "c"}. EINVAL for "/" or a relative path.
ErrorOr<std::pair<std::string, std::string>> split_parent(const std::string& path);

}  // namespace cloudvmi
