// Inode numbers for the nodes the kernel knows, with FUSE lookup counting.
//
// A node is known from the lookup (or readdirplus entry) that returns it until the kernel
// forgets it. The same key (same VM, tree and guest path) keeps its inode number while
// known; after the last forget it is dropped and a later lookup gets a new number.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

#include "fs/node.h"

namespace cloudvmi::fs {

class InodeTable {
  public:
    static constexpr uint64_t kRootIno = 1;  // FUSE_ROOT_ID

    explicit InodeTable(std::shared_ptr<Node> root);

    // The inode of `node` after one more lookup reference; a known key keeps its number and
    // takes the new node object (with its fresher attributes).
    uint64_t remember(const std::shared_ptr<Node>& node);
    std::shared_ptr<Node> get(uint64_t ino) const;
    void forget(uint64_t ino, uint64_t count);
    // After a rename: every known node at key `from`, or below it, is replaced by the node
    // it now is below `to` (Node::moved_to), under the same inode number. What was known
    // at `to` loses its key (it is gone from the guest's namespace).
    void rehome(const std::string& from, const std::string& to);
    // After an unlink or rmdir: the key no longer names the known inode, so that a new
    // file of that name gets a new inode number.
    void drop_key(const std::string& key);
    size_t size() const;
    // The inode number the kernel knows `key` by, if it knows it.
    std::optional<uint64_t> find_key(const std::string& key) const;

  private:
    void drop_key_locked(const std::string& key);
    struct Entry {
        std::shared_ptr<Node> node;
        uint64_t lookups = 0;
    };
    mutable std::mutex mutex_;  // guards both maps and next_; a leaf lock
    std::unordered_map<uint64_t, Entry> by_ino_;
    std::unordered_map<std::string, uint64_t> by_key_;
    uint64_t next_ = kRootIno + 1;
};

}  // namespace cloudvmi::fs
