#include "fs/inode_table.h"

namespace cloudvmi::fs {

InodeTable::InodeTable(std::shared_ptr<Node> root) {
    by_key_[root->key()] = kRootIno;
    by_ino_[kRootIno] = Entry{std::move(root), 1};  // the root is never forgotten
}

uint64_t InodeTable::remember(const std::shared_ptr<Node>& node) {
    std::lock_guard lock(mutex_);
    std::string key = node->key();
    if (auto it = by_key_.find(key); it != by_key_.end()) {
        Entry& e = by_ino_.at(it->second);
        if (it->second != kRootIno) {
            e.node = node;
            ++e.lookups;
        }
        return it->second;
    }
    uint64_t ino = next_++;
    by_key_[key] = ino;
    by_ino_[ino] = Entry{node, 1};
    return ino;
}

std::shared_ptr<Node> InodeTable::get(uint64_t ino) const {
    std::lock_guard lock(mutex_);
    auto it = by_ino_.find(ino);
    return it == by_ino_.end() ? nullptr : it->second.node;
}

void InodeTable::forget(uint64_t ino, uint64_t count) {
    if (ino == kRootIno) return;
    std::lock_guard lock(mutex_);
    auto it = by_ino_.find(ino);
    if (it == by_ino_.end()) return;
    if (it->second.lookups > count) {
        it->second.lookups -= count;
        return;
    }
    by_key_.erase(it->second.node->key());
    by_ino_.erase(it);
}

size_t InodeTable::size() const {
    std::lock_guard lock(mutex_);
    return by_ino_.size();
}

}  // namespace cloudvmi::fs
