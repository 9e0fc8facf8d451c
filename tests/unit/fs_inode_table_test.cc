// fs/inode_table.h: inode numbers with FUSE lookup counting.
#include <atomic>
#include <catch2/catch.hpp>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "fs/inode_table.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;

namespace {

// A node whose key and identity the test controls.
class TestNode final : public Node {
  public:
    TestNode(std::string key, int id) : key_(std::move(key)), id_(id) {}
    std::string key() const override { return key_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFREG | 0444), 0}; }
    int id() const { return id_; }

  private:
    std::string key_;
    int id_;
};

std::shared_ptr<TestNode> node(const std::string& key, int id = 0) {
    return std::make_shared<TestNode>(key, id);
}

int id_of(const std::shared_ptr<Node>& n) {
    auto t = std::dynamic_pointer_cast<TestNode>(n);
    REQUIRE(t != nullptr);
    return t->id();
}

}  // namespace

TEST_CASE("InodeTable: the root is inode 1 and is never forgotten", "[fs]") {
    auto root = node("/", 100);
    InodeTable t(root);
    CHECK(InodeTable::kRootIno == 1);
    CHECK(t.size() == 1);
    CHECK(t.get(1) == root);

    t.forget(1, 1);
    t.forget(1, 1000000);
    CHECK(t.get(1) == root);
    CHECK(t.size() == 1);

    // Remembering the root (a lookup of "." or ".." reaching it) keeps number 1.
    CHECK(t.remember(root) == 1);
    CHECK(t.remember(node("/", 101)) == 1);
    t.forget(1, 5);
    CHECK(t.get(1) != nullptr);
    CHECK(t.get(1)->key() == "/");
    CHECK(t.size() == 1);
}

TEST_CASE("InodeTable: new keys get new numbers, known keys the same one", "[fs]") {
    InodeTable t(node("/"));
    auto a = node("a", 1);
    auto b = node("b", 2);
    uint64_t ia = t.remember(a);
    uint64_t ib = t.remember(b);
    CHECK(ia == 2);
    CHECK(ib == 3);
    CHECK(t.size() == 3);
    CHECK(t.get(ia) == a);
    CHECK(t.get(ib) == b);
    CHECK(t.get(4) == nullptr);
    CHECK(t.get(0) == nullptr);

    // Same key, same object: same number.
    CHECK(t.remember(a) == ia);
    CHECK(t.size() == 3);
}

TEST_CASE("InodeTable: a known key takes the newer node object", "[fs]") {
    InodeTable t(node("/"));
    uint64_t i1 = t.remember(node("k", 1));
    CHECK(id_of(t.get(i1)) == 1);
    uint64_t i2 = t.remember(node("k", 2));
    CHECK(i2 == i1);
    CHECK(id_of(t.get(i1)) == 2);
    CHECK(t.size() == 2);
    // Both lookups are counted: one forget leaves the (newer) node known.
    t.forget(i1, 1);
    REQUIRE(t.get(i1) != nullptr);
    CHECK(id_of(t.get(i1)) == 2);
    t.forget(i1, 1);
    CHECK(t.get(i1) == nullptr);
}

TEST_CASE("InodeTable: lookups are counted until the last forget", "[fs]") {
    InodeTable t(node("/"));
    auto a = node("a");

    SECTION("two remembers need two forgets") {
        uint64_t ino = t.remember(a);
        REQUIRE(t.remember(a) == ino);
        t.forget(ino, 1);
        CHECK(t.get(ino) == a);
        CHECK(t.size() == 2);
        t.forget(ino, 1);
        CHECK(t.get(ino) == nullptr);
        CHECK(t.size() == 1);
    }
    SECTION("or one forget with count 2") {
        uint64_t ino = t.remember(a);
        t.remember(a);
        t.remember(a);
        t.forget(ino, 2);
        CHECK(t.get(ino) == a);
        t.forget(ino, 1);
        CHECK(t.get(ino) == nullptr);
        CHECK(t.size() == 1);
    }
    SECTION("a forgotten key comes back with a new number") {
        uint64_t first = t.remember(a);
        t.forget(first, 1);
        REQUIRE(t.get(first) == nullptr);
        uint64_t second = t.remember(a);
        CHECK(second != first);
        CHECK(second > first);
        CHECK(t.get(second) == a);
        CHECK(t.get(first) == nullptr);
        // The other keys are unaffected.
        auto b = node("b");
        uint64_t ib = t.remember(b);
        CHECK(ib != first);
        CHECK(ib != second);
        CHECK(t.size() == 3);
    }
    SECTION("forgetting one key leaves the others") {
        uint64_t ia = t.remember(a);
        auto b = node("b");
        uint64_t ib = t.remember(b);
        t.forget(ia, 1);
        CHECK(t.get(ia) == nullptr);
        CHECK(t.get(ib) == b);
        // And the forgotten key is really gone from the key index: b keeps its number,
        // a gets a fresh one.
        CHECK(t.remember(b) == ib);
        CHECK(t.remember(node("a")) != ia);
    }
}

TEST_CASE("InodeTable: unknown inodes and over-forgetting are harmless", "[fs]") {
    InodeTable t(node("/"));
    auto a = node("a");
    uint64_t ia = t.remember(a);

    t.forget(999, 1);
    t.forget(0, 1);
    t.forget(ia + 1, 3);
    CHECK(t.size() == 2);
    CHECK(t.get(ia) == a);

    t.forget(ia, 10);  // more than it had
    CHECK(t.get(ia) == nullptr);
    CHECK(t.size() == 1);
    t.forget(ia, 1);  // already gone
    CHECK(t.size() == 1);

    // A later node may not be disturbed by a late forget of an old number.
    uint64_t ia2 = t.remember(a);
    REQUIRE(ia2 != ia);
    t.forget(ia, 1);
    CHECK(t.get(ia2) == a);
    CHECK(t.size() == 2);
}

TEST_CASE("InodeTable: size counts the known nodes", "[fs]") {
    InodeTable t(node("/"));
    std::vector<uint64_t> inos;
    for (int i = 0; i < 20; ++i)
        inos.push_back(t.remember(node("k" + std::to_string(i), i)));
    CHECK(t.size() == 21);
    std::set<uint64_t> distinct(inos.begin(), inos.end());
    CHECK(distinct.size() == 20);
    CHECK(distinct.count(1) == 0);
    for (int i = 0; i < 20; ++i)
        CHECK(id_of(t.get(inos[i])) == i);
    for (uint64_t ino : inos)
        t.forget(ino, 1);
    CHECK(t.size() == 1);
}

TEST_CASE("InodeTable: concurrent remember and forget keep the counts consistent", "[fs]") {
    InodeTable t(node("/"));
    constexpr int kThreads = 4;
    constexpr int kRounds = 1000;
    constexpr int kKeys = 7;
    std::atomic<int> mismatches{0};
    std::atomic<uint64_t> max_ino{0};
    std::atomic<bool> go{false};

    std::vector<std::thread> threads;
    for (int th = 0; th < kThreads; ++th) {
        threads.emplace_back([&, th] {
            while (!go.load())
                std::this_thread::yield();
            for (int i = 0; i < kRounds; ++i) {
                std::string key = "k" + std::to_string((i + th) % kKeys);
                uint64_t ino = t.remember(node(key, th));
                // While this thread holds a lookup, the number must lead to this key.
                auto n = t.get(ino);
                if (!n || n->key() != key || ino == InodeTable::kRootIno) ++mismatches;
                // Sometimes hold two lookups and give them back at once.
                if (i % 3 == 0) {
                    if (t.remember(node(key, th)) != ino) ++mismatches;
                    t.forget(ino, 2);
                } else {
                    t.forget(ino, 1);
                }
                uint64_t seen = max_ino.load();
                while (ino > seen && !max_ino.compare_exchange_weak(seen, ino)) {
                }
            }
        });
    }
    go = true;
    for (auto& th : threads)
        th.join();

    CHECK(mismatches.load() == 0);
    CHECK(t.size() == 1);
    for (uint64_t ino = 2; ino <= max_ino.load(); ++ino) {
        if (t.get(ino) != nullptr) FAIL_CHECK("inode " << ino << " is still known");
    }
    // Every key is gone: remembering one now gets a number never used before.
    CHECK(t.remember(node("k0")) > max_ino.load());
}

namespace {

// A node that stands for a path, for the rename bookkeeping.
class PathNode final : public Node {
  public:
    explicit PathNode(std::string path) : path_(std::move(path)) {}
    std::string key() const override { return "p:" + path_; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{}; }
    std::shared_ptr<Node> moved_to(const std::string& from, const std::string& to) const override {
        std::string k = key();
        bool below = k.size() > from.size() && k.starts_with(from) && k[from.size()] == '/';
        if (k != from && !below) return nullptr;
        return std::make_shared<PathNode>(to.substr(2) + k.substr(from.size()));
    }

  private:
    std::string path_;
};

}  // namespace

TEST_CASE("InodeTable: a rename moves known nodes and their children, same inodes", "[fs]") {
    InodeTable t(std::make_shared<PathNode>("/"));
    uint64_t dir = t.remember(std::make_shared<PathNode>("/a"));
    uint64_t file = t.remember(std::make_shared<PathNode>("/a/f"));
    uint64_t other = t.remember(std::make_shared<PathNode>("/ab"));
    uint64_t victim = t.remember(std::make_shared<PathNode>("/b"));
    t.rehome("p:/a", "p:/b");
    CHECK(t.get(dir)->key() == "p:/b");
    CHECK(t.get(file)->key() == "p:/b/f");
    CHECK(t.get(other)->key() == "p:/ab");  // a name that only starts the same
    // The same path is the same inode; the overwritten one lost its key.
    CHECK(t.remember(std::make_shared<PathNode>("/b/f")) == file);
    CHECK(t.remember(std::make_shared<PathNode>("/b")) == dir);
    // Forgetting the overwritten inode leaves the new owner of its key alone.
    t.forget(victim, 1);
    CHECK(t.remember(std::make_shared<PathNode>("/b")) == dir);
}

TEST_CASE("InodeTable: a removed name gets a new inode when it comes back", "[fs]") {
    InodeTable t(std::make_shared<PathNode>("/"));
    uint64_t first = t.remember(std::make_shared<PathNode>("/x"));
    t.drop_key("p:/x");
    uint64_t second = t.remember(std::make_shared<PathNode>("/x"));
    CHECK(second != first);
    t.forget(first, 1);
    CHECK(t.get(first) == nullptr);
    CHECK(t.remember(std::make_shared<PathNode>("/x")) == second);
}

TEST_CASE("InodeTable: a rename leaves an unlinked inode of the same name alone", "[fs]") {
    InodeTable t(std::make_shared<PathNode>("/"));
    uint64_t unlinked = t.remember(std::make_shared<PathNode>("/a"));  // still open, say
    t.drop_key("p:/a");
    uint64_t fresh = t.remember(std::make_shared<PathNode>("/a"));
    REQUIRE(fresh != unlinked);
    t.rehome("p:/a", "p:/c");
    CHECK(t.get(fresh)->key() == "p:/c");
    CHECK(t.get(unlinked)->key() == "p:/a");
    CHECK(t.remember(std::make_shared<PathNode>("/c")) == fresh);
}
