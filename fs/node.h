// Nodes of the /vmi tree.
//
// Every directory and file of the mount is a Node. The defaults encode policy: a node is
// read-only unless it says otherwise, and every change (write, create, unlink, chmod...)
// is refused with EACCES. Nodes never see FUSE types; fuse_server.cc translates.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "fs/access.h"

namespace cloudvmi::fs {

class Vm;
class VmExecutor;

// Attributes with how long the kernel may cache them.
struct NodeAttr {
    struct stat st {};
    double timeout = 0;
};

class FileHandle {
  public:
    virtual ~FileHandle() = default;
    virtual ErrorOr<std::vector<uint8_t>> read(size_t size, off_t offset) = 0;
    // What read() would return, when that needs no guest access (nullopt otherwise): such
    // reads are answered on the FUSE thread, without a hop through the VM's queue, from
    // bytes the handle holds unchanged until it is released (no copy).
    virtual std::optional<std::span<const uint8_t>> read_cached(size_t, off_t) const {
        return std::nullopt;
    }
    // `who` is the writer (the policy decides per write call).
    virtual ErrorOr<size_t> write(std::span<const uint8_t>, off_t, const Caller& /*who*/) {
        return make_error(EACCES, "writes are not allowed");
    }
    // Called once when the last reference is dropped; errors are logged, not returned.
    virtual void release() {}
    // Served without the page cache: content is generated on every read.
    virtual bool direct_io() const { return true; }
};

class Node;

struct DirEntry {
    std::string name;
    mode_t type = 0;             // S_IFDIR, S_IFREG, ... (0: unknown)
    std::shared_ptr<Node> node;  // set for readdirplus (attributes known)
};

// A requested change of attributes (setattr); only set fields are meant.
struct AttrChange {
    // A time to set: given, or "now".
    struct Time {
        bool now = false;
        timespec value{};
    };
    std::optional<off_t> size;
    std::optional<mode_t> mode;
    std::optional<uid_t> uid;
    std::optional<gid_t> gid;
    std::optional<Time> atime;
    std::optional<Time> mtime;
    bool other_times = false;  // ctime alone: nothing we can set
};

class Node : public std::enable_shared_from_this<Node> {
  public:
    virtual ~Node() = default;

    // The VM whose queue runs this node's operations; nullptr for nodes answered locally.
    virtual Vm* vm() const { return nullptr; }
    // A queue of its own for this node's operations, when not its VM's (a remote node's).
    virtual VmExecutor* queue() const { return nullptr; }
    // What the node shows, for the access check (fs/access.h).
    virtual Exposure exposure() const { return Exposure::kGuestData; }
    // getattr without the guest (synthetic attributes), even if the node has a VM.
    virtual bool local_getattr() const { return vm() == nullptr; }
    // Identity for the inode table: the same key is the same inode while it is known.
    virtual std::string key() const = 0;
    // The key a child `name` of this directory has (guest directories only; "" otherwise).
    virtual std::string child_key(const std::string& /*name*/) const { return ""; }
    // After the guest renamed key `from` to `to`: this node as it is now, if it was `from`
    // or below it (null otherwise).
    virtual std::shared_ptr<Node> moved_to(const std::string& /*from*/,
                                           const std::string& /*to*/) const {
        return nullptr;
    }
    // How long the kernel may keep a lookup of this node.
    virtual double entry_timeout() const { return 1.0; }

    virtual ErrorOr<NodeAttr> getattr() = 0;
    // The attributes as known now, without asking a guest (nullopt if that would take a
    // guest call): what readdirplus hands out on the FUSE thread.
    virtual std::optional<NodeAttr> known_attr() {
        if (!local_getattr()) return std::nullopt;
        auto a = getattr();
        return a ? std::optional<NodeAttr>(*a) : std::nullopt;
    }

    // Directories.
    virtual ErrorOr<std::shared_ptr<Node>> lookup(const std::string&) {
        return make_error(ENOTDIR, "not a directory");
    }
    // With attributes when `plus` (the returned nodes carry them). `who` asks: reads of
    // the guests' trees are decided by the policy too.
    virtual ErrorOr<std::vector<DirEntry>> readdir(bool /*plus*/, const Caller& /*who*/) {
        return make_error(ENOTDIR, "not a directory");
    }

    // Files.
    virtual ErrorOr<std::unique_ptr<FileHandle>> open(int /*flags*/, const Caller& /*who*/) {
        return make_error(EISDIR, "is a directory");
    }
    virtual ErrorOr<std::string> readlink() { return make_error(EINVAL, "not a symbolic link"); }

    // Changes: refused unless a node allows them. `who` asks (for the policy and the audit).
    virtual ErrorOr<NodeAttr> setattr(const AttrChange&, const Caller&) {
        return make_error(EACCES, "attributes cannot be changed");
    }
    virtual ErrorOr<std::shared_ptr<Node>> mkdir(const std::string&, mode_t, const Caller&) {
        return make_error(EACCES, "directories cannot be created");
    }
    virtual ErrorOr<void> unlink(const std::string&, const Caller&) {
        return make_error(EACCES, "cannot remove");
    }
    virtual ErrorOr<void> rmdir(const std::string&, const Caller&) {
        return make_error(EACCES, "cannot remove");
    }
    // `flags`: RENAME_NOREPLACE / RENAME_EXCHANGE.
    virtual ErrorOr<void> rename(const std::string&, Node& /*new_parent*/, const std::string&,
                                 unsigned /*flags*/, const Caller&) {
        return make_error(EACCES, "cannot rename");
    }
    // symlink(target, name)
    virtual ErrorOr<std::shared_ptr<Node>> symlink(const std::string&, const std::string&,
                                                   const Caller&) {
        return make_error(EACCES, "cannot create links");
    }
    // create(name, mode, open flags, the opened handle (out))
    virtual ErrorOr<std::shared_ptr<Node>> create(const std::string&, mode_t, int,
                                                  std::unique_ptr<FileHandle>&, const Caller&) {
        return make_error(EACCES, "files cannot be created");
    }
    virtual ErrorOr<void> setxattr(const std::string&, std::span<const uint8_t>, int,
                                   const Caller&) {
        return make_error(EACCES, "extended attributes cannot be changed");
    }
};

// Attributes of a synthetic directory or file owned by root.
struct stat synthetic_stat(mode_t mode, off_t size = 0);

// For Node::moved_to of nodes keyed `prefix` + path: the path the node keyed `key` has
// after `from` was renamed to `to` (it was `from` or below it); nullopt if unaffected.
std::optional<std::string> moved_path(const std::string& key, const std::string& prefix,
                                      const std::string& from, const std::string& to);

}  // namespace cloudvmi::fs
