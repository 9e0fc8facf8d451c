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

std::optional<uint64_t> InodeTable::find_key(const std::string& key) const {
    std::lock_guard lock(mutex_);
    auto it = by_key_.find(key);
    if (it == by_key_.end()) return std::nullopt;
    return it->second;
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
    // The key may name another inode by now (a rename over it, a new file of that name).
    if (auto k = by_key_.find(it->second.node->key()); k != by_key_.end() && k->second == ino)
        by_key_.erase(k);
    by_ino_.erase(it);
}

void InodeTable::rehome(const std::string& from, const std::string& to) {
    std::lock_guard lock(mutex_);
    drop_key_locked(to);
    for (auto& [ino, entry] : by_ino_) {
        // Only what the name still leads to moves: an unlinked or replaced inode stays put.
        auto current = by_key_.find(entry.node->key());
        if (current == by_key_.end() || current->second != ino) continue;
        auto moved = entry.node->moved_to(from, to);
        if (!moved) continue;
        if (auto k = by_key_.find(entry.node->key()); k != by_key_.end() && k->second == ino)
            by_key_.erase(k);
        entry.node = std::move(moved);
        by_key_[entry.node->key()] = ino;
    }
}

void InodeTable::drop_key(const std::string& key) {
    std::lock_guard lock(mutex_);
    drop_key_locked(key);
}

void InodeTable::drop_key_locked(const std::string& key) {
    // The node itself and what was below it.
    for (auto it = by_key_.begin(); it != by_key_.end();) {
        bool below = it->first.size() > key.size() && it->first.starts_with(key) &&
                     it->first[key.size()] == '/';
        if (it->first == key || below) {
            it = by_key_.erase(it);
        } else {
            ++it;
        }
    }
}

size_t InodeTable::size() const {
    std::lock_guard lock(mutex_);
    return by_ino_.size();
}

}  // namespace cloudvmi::fs
