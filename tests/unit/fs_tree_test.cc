// fs/filesystem.h: the /vmi node tree without FUSE, with VMs whose gdbstubs do not exist.
// Everything above the guest's own trees is answered locally; below, requests go through
// the session and fail fast with ENOTCONN.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "fs/filesystem.h"
#include "tests/unit/temp_dir.h"

using namespace cloudvmi;
using namespace cloudvmi::fs;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

namespace {

const Caller kRootCaller{};

using cloudvmi::test::TempDir;

Config make_config(const std::string& state_dir, long timeout_ms = 500) {
    std::string yaml =
        "node: n1\n"
        "state_dir: " +
        state_dir +
        "\n"
        "request_timeout_ms: " +
        std::to_string(timeout_ms) +
        "\n"
        "vms:\n"
        "  - name: vm-a\n"
        "    gdb: unix:/nonexistent/a.gdb\n"
        "  - name: vm-b\n"
        "    gdb: unix:/nonexistent/b.gdb\n";
    auto c = Config::parse(yaml, "tree-test.yaml");
    if (!c) throw std::runtime_error("test config: " + c.error().message());
    return *c;
}

// A mount's tree with its temp state dir.
struct Tree {
    TempDir dir{"cloudvmi-fs-tree"};
    Config config = make_config(dir.state_dir());
    Filesystem fs{config, Filesystem::session_options(config, "")};

    std::shared_ptr<Node> root() { return fs.inodes().get(InodeTable::kRootIno); }
};

template <class T>
T ok(ErrorOr<T> r) {
    if (!r) FAIL("unexpected error: " << r.error().describe());
    return std::move(*r);
}

template <class T>
int err_of(const ErrorOr<T>& r) {
    return r ? 0 : r.error().code();
}

std::shared_ptr<Node> walk(Tree& t, const std::vector<std::string>& path) {
    auto n = t.root();
    for (const auto& name : path) {
        INFO("lookup of " << name);
        n = ok(n->lookup(name));
        REQUIRE(n != nullptr);
    }
    return n;
}

std::vector<std::string> names_of(const std::vector<DirEntry>& entries) {
    std::vector<std::string> out;
    for (const auto& e : entries)
        out.push_back(e.name);
    return out;
}

std::string read_all(FileHandle& h) {
    std::string out;
    for (off_t off = 0;;) {
        auto chunk = ok(h.read(7, off));  // small reads: exercise offsets
        if (chunk.empty()) break;
        out.append(chunk.begin(), chunk.end());
        off += static_cast<off_t>(chunk.size());
        if (out.size() > 1 << 20) FAIL("file does not end");
    }
    return out;
}

std::string read_file(const std::shared_ptr<Node>& n) {
    auto h = ok(n->open(O_RDONLY, kRootCaller));
    REQUIRE(h != nullptr);
    std::string s = read_all(*h);
    h->release();
    return s;
}

// A small JSON checker: one value, whole input (strings, numbers, objects, arrays, literals).
class Json {
  public:
    explicit Json(const std::string& s) : s_(s) {}
    bool valid() {
        ws();
        if (!value()) return false;
        ws();
        return i_ == s_.size();
    }

  private:
    void ws() {
        while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_])))
            ++i_;
    }
    bool lit(const char* w) {
        size_t n = std::char_traits<char>::length(w);
        if (s_.compare(i_, n, w) != 0) return false;
        i_ += n;
        return true;
    }
    bool string() {
        if (i_ >= s_.size() || s_[i_] != '"') return false;
        ++i_;
        while (i_ < s_.size() && s_[i_] != '"') {
            if (static_cast<unsigned char>(s_[i_]) < 0x20) return false;
            if (s_[i_] == '\\') ++i_;
            ++i_;
        }
        if (i_ >= s_.size()) return false;
        ++i_;
        return true;
    }
    bool number() {
        size_t start = i_;
        if (i_ < s_.size() && s_[i_] == '-') ++i_;
        while (i_ < s_.size() &&
               (std::isdigit(static_cast<unsigned char>(s_[i_])) || s_[i_] == '.' ||
                s_[i_] == 'e' || s_[i_] == 'E' || s_[i_] == '+' || s_[i_] == '-')) {
            ++i_;
        }
        std::string num = s_.substr(start, i_ - start);
        if (num.empty() || num == "-") return false;
        char* end = nullptr;
        std::strtod(num.c_str(), &end);
        return end == num.c_str() + num.size();
    }
    bool value() {
        ws();
        if (i_ >= s_.size()) return false;
        char c = s_[i_];
        if (c == '{') {
            ++i_;
            ws();
            if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
            while (true) {
                ws();
                if (!string()) return false;
                ws();
                if (i_ >= s_.size() || s_[i_++] != ':') return false;
                if (!value()) return false;
                ws();
                if (i_ < s_.size() && s_[i_] == ',') {
                    ++i_;
                    continue;
                }
                if (i_ < s_.size() && s_[i_] == '}') return ++i_, true;
                return false;
            }
        }
        if (c == '[') {
            ++i_;
            ws();
            if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
            while (true) {
                if (!value()) return false;
                ws();
                if (i_ < s_.size() && s_[i_] == ',') {
                    ++i_;
                    continue;
                }
                if (i_ < s_.size() && s_[i_] == ']') return ++i_, true;
                return false;
            }
        }
        if (c == '"') return string();
        if (lit("true") || lit("false") || lit("null")) return true;
        return number();
    }

    const std::string& s_;
    size_t i_ = 0;
};

void check_dir_attr(Node& n, mode_t perm = 0555) {
    auto a = ok(n.getattr());
    CHECK(S_ISDIR(a.st.st_mode));
    CHECK((a.st.st_mode & 07777) == perm);
    CHECK(a.st.st_uid == 0);
    CHECK(a.st.st_gid == 0);
    CHECK(a.st.st_nlink >= 2);
}

const std::vector<std::string> kVmChildren = {"proc", "sys", "root", "ctl", ".cloudvmi"};
const std::vector<std::string> kSessionFiles = {"status", "kernel", "kernel-entry", "stats",
                                                "stats.json"};

}  // namespace

TEST_CASE("Filesystem::session_options bounds every wait by the request timeout", "[fs]") {
    TempDir dir{"cloudvmi-fs-tree"};
    Config c = make_config(dir.state_dir(), 500);
    auto o = Filesystem::session_options(c, "/usr/bin/cloudvmi");
    CHECK(o.state_dir == dir.state_dir());
    CHECK(o.guardian_program == "/usr/bin/cloudvmi");
    CHECK(o.attach_timeout == Millis(500));
    CHECK(o.client.connect_timeout == Millis(500));
    CHECK(o.client.request_timeout == Millis(500));
    CHECK(o.shadow.batch_timeout == Millis(500));
    CHECK(o.shadow.acquire_timeout == Millis(500));

    Config slow = make_config(dir.state_dir(), 20000);
    auto s = Filesystem::session_options(slow, "");
    CHECK(s.guardian_program.empty());
    CHECK(s.attach_timeout == Millis(20000));
    CHECK(s.shadow.batch_timeout == Millis(20000));
    CHECK(s.shadow.attach_timeout == Millis(slow.attach_timeout_ms));
    CHECK(s.client.connect_timeout == Millis(3000));  // capped
    CHECK(s.client.request_timeout == Millis(3000));
}

TEST_CASE("Filesystem: the root and the node directory", "[fs]") {
    Tree t;
    auto root = t.root();
    REQUIRE(root != nullptr);
    check_dir_attr(*root);
    CHECK(root->vm() == nullptr);
    CHECK(root->local_getattr());

    auto node = ok(root->lookup("n1"));
    REQUIRE(node != nullptr);
    check_dir_attr(*node);
    CHECK(node->local_getattr());
    for (const char* other : {"n2", "", ".", "..", "N1", "n1 ", "vm-a"}) {
        INFO("lookup of '" << other << "'");
        CHECK(err_of(root->lookup(other)) == ENOENT);
    }

    SECTION("root readdir") {
        auto plain = ok(root->readdir(false, kRootCaller));
        // The nodes, then the mount's own files.
        REQUIRE(names_of(plain) == std::vector<std::string>{"n1", ".cloudvmi"});
        CHECK(plain[0].type == S_IFDIR);
        CHECK(plain[0].node == nullptr);
        auto plus = ok(root->readdir(true, kRootCaller));
        REQUIRE(names_of(plus) == std::vector<std::string>{"n1", ".cloudvmi"});
        CHECK(plus[0].type == S_IFDIR);
        REQUIRE(plus[0].node != nullptr);
        CHECK(plus[0].node->key() == node->key());
        check_dir_attr(*plus[0].node);
    }
    SECTION("node readdir lists the VMs by name, then the node's .cloudvmi") {
        auto plain = ok(node->readdir(false, kRootCaller));
        REQUIRE(names_of(plain) == std::vector<std::string>{"vm-a", "vm-b", ".cloudvmi"});
        for (const auto& e : plain) {
            CHECK(e.type == S_IFDIR);
            CHECK(e.node == nullptr);
        }
        auto plus = ok(node->readdir(true, kRootCaller));
        REQUIRE(names_of(plus) == std::vector<std::string>{"vm-a", "vm-b", ".cloudvmi"});
        for (const auto& e : plus) {
            REQUIRE(e.node != nullptr);
            CHECK(e.node->key() == ok(node->lookup(e.name))->key());
            check_dir_attr(*e.node);
        }
        CHECK(err_of(node->lookup("vm-c")) == ENOENT);
        CHECK(err_of(node->lookup("proc")) == ENOENT);
        CHECK(err_of(node->lookup("")) == ENOENT);
    }
    SECTION("the node's .cloudvmi/status says what the node is") {
        auto info = ok(node->lookup(".cloudvmi"));
        auto status = ok(info->lookup("status"));
        auto h = ok(status->open(O_RDONLY, kRootCaller));
        auto text = ok(h->read(4096, 0));
        std::string s(text.begin(), text.end());
        CHECK_THAT(s, Contains("node: n1\nkind: listed\nstate: connected\nvms: 2\n"));
        CHECK(err_of(info->lookup("nope")) == ENOENT);
    }
}

TEST_CASE("Filesystem: a VM directory is answered without its guest", "[fs]") {
    Tree t;
    Vm* vm = t.fs.find_vm("vm-a");
    REQUIRE(vm != nullptr);
    auto dir = walk(t, {"n1", "vm-a"});
    check_dir_attr(*dir);
    CHECK(dir->local_getattr());

    auto plain = ok(dir->readdir(false, kRootCaller));
    CHECK(names_of(plain) == kVmChildren);
    for (const auto& e : plain) {
        CHECK(e.type == S_IFDIR);
        CHECK(e.node == nullptr);
    }
    auto plus = ok(dir->readdir(true, kRootCaller));
    CHECK(names_of(plus) == kVmChildren);
    for (const auto& e : plus) {
        INFO(e.name);
        REQUIRE(e.node != nullptr);
        CHECK(e.node->local_getattr());
        check_dir_attr(*e.node);
    }
    for (const auto& name : kVmChildren) {
        INFO(name);
        auto child = ok(dir->lookup(name));
        REQUIRE(child != nullptr);
        CHECK(child->local_getattr());
        check_dir_attr(*child);
    }
    CHECK(err_of(dir->lookup("etc")) == ENOENT);
    CHECK(err_of(dir->lookup(".cloudvmi2")) == ENOENT);

    // The guest trees belong to the VM's queue; the session directory does not.
    CHECK(ok(dir->lookup("proc"))->vm() == vm);
    CHECK(ok(dir->lookup("sys"))->vm() == vm);
    CHECK(ok(dir->lookup("root"))->vm() == vm);
    CHECK(ok(dir->lookup(".cloudvmi"))->vm() == nullptr);

    // None of this went near the guest.
    CHECK(vm->session().state() == SessionState::kDetached);
    CHECK(vm->session().status().batches == 0);
    CHECK_FALSE(std::filesystem::exists(t.dir.state_dir()));
}

TEST_CASE("Filesystem: the guest trees fail fast with ENOTCONN when the VM is unreachable",
          "[fs]") {
    Tree t;
    Vm* vm = t.fs.find_vm("vm-a");
    REQUIRE(vm != nullptr);
    auto proc = walk(t, {"n1", "vm-a", "proc"});

    auto started = Clock::now();
    auto r = proc->readdir(false, kRootCaller);
    double ms = elapsed_ms(started);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == ENOTCONN);
    CHECK_FALSE(r.error().from_guest());
    CHECK(ms < 2000);

    CHECK(err_of(proc->readdir(true, kRootCaller)) == ENOTCONN);
    CHECK(err_of(proc->lookup("cpuinfo")) == ENOTCONN);
    CHECK(err_of(walk(t, {"n1", "vm-a", "root"})->lookup("etc")) == ENOTCONN);
    // A name that can never be a single component is refused without asking.
    CHECK(err_of(proc->lookup("a/b")) == ENOENT);
    CHECK(vm->session().state() == SessionState::kError);

    // The tree root's own attributes still answer.
    check_dir_attr(*proc);

    // The other VM was not touched.
    CHECK(t.fs.find_vm("vm-b")->session().state() == SessionState::kDetached);

    // .cloudvmi/kernel needs the guest too.
    auto kernel = walk(t, {"n1", "vm-a", ".cloudvmi", "kernel"});
    CHECK(kernel->vm() == vm);
    CHECK(err_of(kernel->open(O_RDONLY, kRootCaller)) == ENOTCONN);
}

TEST_CASE("Filesystem: .cloudvmi lists the session files", "[fs]") {
    Tree t;
    auto dir = walk(t, {"n1", "vm-b", ".cloudvmi"});
    check_dir_attr(*dir);
    auto plain = ok(dir->readdir(false, kRootCaller));
    CHECK(names_of(plain) == kSessionFiles);
    for (const auto& e : plain) {
        CHECK(e.type == S_IFREG);
        CHECK(e.node == nullptr);
    }
    auto plus = ok(dir->readdir(true, kRootCaller));
    CHECK(names_of(plus) == kSessionFiles);
    for (const auto& e : plus) {
        INFO(e.name);
        REQUIRE(e.node != nullptr);
        CHECK(e.node->key() == ok(dir->lookup(e.name))->key());
    }
    for (const auto& name : kSessionFiles) {
        INFO(name);
        auto f = ok(dir->lookup(name));
        CHECK(f->local_getattr());
        auto a = ok(f->getattr());
        CHECK(S_ISREG(a.st.st_mode));
        // Kernel addresses (KASLR) are host root's only, and shown so.
        bool addresses = name == "kernel-entry";
        CHECK((a.st.st_mode & 07777) == (addresses ? 0400 : 0444));
        CHECK((f->exposure() == Exposure::kKernelAddresses) == addresses);
        CHECK(err_of(f->lookup("x")) == ENOTDIR);
        CHECK(err_of(f->readdir(false, kRootCaller)) == ENOTDIR);
        CHECK(err_of(f->readlink()) == EINVAL);
    }
    CHECK(err_of(dir->lookup("statuses")) == ENOENT);
    CHECK(err_of(dir->lookup("")) == ENOENT);
}

TEST_CASE("Filesystem: .cloudvmi/status", "[fs]") {
    Tree t;
    Vm* vm = t.fs.find_vm("vm-a");
    REQUIRE(vm != nullptr);
    auto status = walk(t, {"n1", "vm-a", ".cloudvmi", "status"});
    CHECK(status->vm() == nullptr);  // answered even when the VM is down or busy

    SECTION("before any attempt: idle") {
        std::string s = read_file(status);
        INFO(s);
        CHECK_THAT(s, StartsWith("state: idle\n"));
        CHECK_THAT(s, Contains("\ngdb: unix:/nonexistent/a.gdb\n"));
        CHECK_THAT(s, !Contains("error:"));
        CHECK_THAT(s, !Contains("shadow_pid:"));
    }
    SECTION("after a failed attempt: error, with the reason") {
        REQUIRE(err_of(walk(t, {"n1", "vm-a", "sys"})->readdir(false, kRootCaller)) == ENOTCONN);
        std::string s = read_file(status);
        INFO(s);
        CHECK_THAT(s, StartsWith("state: error\n"));
        CHECK_THAT(s, Contains("\nerror: "));
        CHECK_THAT(s, Contains("/nonexistent/a.gdb"));
        CHECK_THAT(s, Contains("\ngdb: unix:/nonexistent/a.gdb\n"));
        // The other VM's status is its own.
        std::string b = read_file(walk(t, {"n1", "vm-b", ".cloudvmi", "status"}));
        CHECK_THAT(b, StartsWith("state: idle\n"));
        CHECK_THAT(b, Contains("gdb: unix:/nonexistent/b.gdb\n"));
    }
    SECTION("it cannot be opened for writing") {
        CHECK(err_of(status->open(O_WRONLY, kRootCaller)) == EACCES);
        CHECK(err_of(status->open(O_RDWR, kRootCaller)) == EACCES);
        CHECK(err_of(status->open(O_WRONLY | O_TRUNC, kRootCaller)) == EACCES);
    }
    SECTION("reads honour offsets") {
        auto h = ok(status->open(O_RDONLY, kRootCaller));
        auto head = ok(h->read(6, 0));
        CHECK(std::string(head.begin(), head.end()) == "state:");
        auto mid = ok(h->read(4, 7));
        CHECK(std::string(mid.begin(), mid.end()) == "idle");
        CHECK(ok(h->read(100, 1 << 20)).empty());
        CHECK(err_of(h->read(10, -1)) == EINVAL);
        CHECK_FALSE(h->write(std::span<const uint8_t>(), 0, kRootCaller).has_value());
        CHECK(h->direct_io());
        h->release();
    }
}

TEST_CASE("Filesystem: .cloudvmi/stats and stats.json", "[fs]") {
    Tree t;
    Vm* vm = t.fs.find_vm("vm-a");
    REQUIRE(vm != nullptr);
    auto json = walk(t, {"n1", "vm-a", ".cloudvmi", "stats.json"});
    auto text = walk(t, {"n1", "vm-a", ".cloudvmi", "stats"});
    CHECK(json->vm() == nullptr);
    CHECK(text->vm() == nullptr);

    std::string j0 = read_file(json);
    INFO(j0);
    CHECK(Json(j0).valid());
    auto parsed0 = nlohmann::json::parse(j0);
    CHECK(parsed0["requests"] == 0);
    CHECK(parsed0["state"] == "idle");
    CHECK_THAT(read_file(text), StartsWith("requests: 0\n"));

    Error g = Error::guest(ENOENT, "x");
    Error h(ETIMEDOUT, "y");
    vm->record(12.5, nullptr);
    vm->record(3, &g);
    vm->record(4, &h);
    std::string j1 = read_file(json);
    INFO(j1);
    CHECK(Json(j1).valid());
    auto parsed1 = nlohmann::ordered_json::parse(j1);
    CHECK(parsed1["requests"] == 3);
    CHECK(parsed1["errors"] == 1);
    CHECK(parsed1["guest_errors"] == 1);
    CHECK(parsed1["latency_max_ms"] == 12.5);
    CHECK(parsed1.begin().key() == "requests");  // the order of the text file
    std::string t1 = read_file(text);
    CHECK_THAT(t1, Contains("requests: 3\n"));
    CHECK_THAT(t1, Contains("errors: 1\n"));
    CHECK_THAT(t1, Contains("state: idle\n"));
    CHECK(err_of(json->open(O_RDWR, kRootCaller)) == EACCES);

    // After a failed guest request the state changes and the JSON stays valid.
    REQUIRE(err_of(walk(t, {"n1", "vm-a", "proc"})->readdir(false, kRootCaller)) == ENOTCONN);
    std::string j2 = read_file(json);
    INFO(j2);
    CHECK(Json(j2).valid());
    CHECK(nlohmann::json::parse(j2)["state"] == "error");
}

TEST_CASE("Filesystem: the keys of different nodes are distinct and stable", "[fs]") {
    Tree t;
    std::vector<std::shared_ptr<Node>> nodes;
    nodes.push_back(t.root());
    auto node_dir = walk(t, {"n1"});
    nodes.push_back(node_dir);
    for (const char* vm : {"vm-a", "vm-b"}) {
        auto vdir = ok(node_dir->lookup(vm));
        nodes.push_back(vdir);
        for (const auto& c : kVmChildren)
            nodes.push_back(ok(vdir->lookup(c)));
        auto sdir = ok(vdir->lookup(".cloudvmi"));
        for (const auto& f : kSessionFiles)
            nodes.push_back(ok(sdir->lookup(f)));
        nodes.push_back(ok(ok(vdir->lookup("ctl"))->lookup("kill")));
    }
    auto mount_dir = ok(t.root()->lookup(".cloudvmi"));
    nodes.push_back(mount_dir);
    nodes.push_back(ok(mount_dir->lookup("policy-status")));
    nodes.push_back(ok(mount_dir->lookup("reload")));
    std::set<std::string> keys;
    for (const auto& n : nodes) {
        INFO(n->key());
        CHECK(keys.insert(n->key()).second);
    }
    CHECK(keys.size() == 2 + 2 * (1 + kVmChildren.size() + kSessionFiles.size() + 1) + 3);
    // The same path gives the same key (the inode table relies on it).
    CHECK(walk(t, {"n1", "vm-a", "proc"})->key() == walk(t, {"n1", "vm-a", "proc"})->key());
    CHECK(walk(t, {"n1", "vm-b", ".cloudvmi", "stats"})->key() ==
          walk(t, {"n1", "vm-b", ".cloudvmi", "stats"})->key());

    // And through the inode table: the same path is the same inode.
    auto& inodes = t.fs.inodes();
    uint64_t a1 = inodes.remember(walk(t, {"n1", "vm-a", "sys"}));
    uint64_t a2 = inodes.remember(walk(t, {"n1", "vm-a", "sys"}));
    uint64_t b = inodes.remember(walk(t, {"n1", "vm-b", "sys"}));
    CHECK(a1 == a2);
    CHECK(a1 != b);
    CHECK(inodes.remember(t.root()) == InodeTable::kRootIno);
}

TEST_CASE("Filesystem: every node refuses changes with EACCES", "[fs]") {
    Tree t;
    std::vector<std::pair<std::string, std::shared_ptr<Node>>> nodes = {
        {"/", t.root()},
        {"n1", walk(t, {"n1"})},
        {"vm-b", walk(t, {"n1", "vm-b"})},
        {"proc", walk(t, {"n1", "vm-b", "proc"})},
        {"sys", walk(t, {"n1", "vm-b", "sys"})},
        {"root", walk(t, {"n1", "vm-b", "root"})},
        {".cloudvmi", walk(t, {"n1", "vm-b", ".cloudvmi"})},
        {"status", walk(t, {"n1", "vm-b", ".cloudvmi", "status"})},
        {"stats.json", walk(t, {"n1", "vm-b", ".cloudvmi", "stats.json"})},
    };
    auto other = walk(t, {"n1", "vm-b", ".cloudvmi"});
    for (auto& [name, n] : nodes) {
        INFO(name);
        AttrChange chmod;
        chmod.mode = 0777;
        CHECK(err_of(n->setattr(chmod, kRootCaller)) == EACCES);
        AttrChange trunc;
        trunc.size = 0;
        CHECK(err_of(n->setattr(trunc, kRootCaller)) == EACCES);
        CHECK(err_of(n->mkdir("d", 0755, kRootCaller)) == EACCES);
        CHECK(err_of(n->unlink("f", kRootCaller)) == EACCES);
        CHECK(err_of(n->rmdir("d", kRootCaller)) == EACCES);
        CHECK(err_of(n->rename("a", *n, "b", 0, kRootCaller)) == EACCES);
        // Out of a guest tree there is no rename, as across file systems.
        bool guest_tree = name == "proc" || name == "sys" || name == "root";
        CHECK(err_of(n->rename("a", *other, "b", 0, kRootCaller)) == (guest_tree ? EXDEV : EACCES));
        CHECK(err_of(n->symlink("x", "l", kRootCaller)) == EACCES);
        CHECK(err_of(n->setxattr("user.x", {}, 0, kRootCaller)) == EACCES);
        std::unique_ptr<FileHandle> handle;
        CHECK(err_of(n->create("f", 0644, O_WRONLY | O_CREAT, handle, kRootCaller)) == EACCES);
        CHECK(handle == nullptr);
        CHECK(err_of(n->readlink()) == EINVAL);
    }
    // Directories are not files.
    for (size_t i = 0; i < 7; ++i) {
        INFO(nodes[i].first);
        CHECK(err_of(nodes[i].second->open(O_RDONLY, kRootCaller)) == EISDIR);
    }
    // None of it reached the guest.
    CHECK(t.fs.find_vm("vm-b")->session().state() == SessionState::kDetached);
    CHECK(t.fs.find_vm("vm-b")->session().status().batches == 0);
}

TEST_CASE("Filesystem::find_vm and shutdown", "[fs]") {
    Tree t;
    REQUIRE(t.fs.all_vms().size() == 2);
    Vm* a = t.fs.find_vm("vm-a");
    Vm* b = t.fs.find_vm("vm-b");
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(a != b);
    CHECK(a->name() == "vm-a");
    CHECK(a->node() == "n1");
    CHECK(b->config().gdb == "unix:/nonexistent/b.gdb");
    CHECK(a == t.fs.all_vms()[0]);
    CHECK(t.fs.find_vm("vm-c") == nullptr);
    CHECK(t.fs.find_vm("") == nullptr);
    CHECK(t.fs.find_vm("VM-A") == nullptr);
    // The configured cache lifetimes reach every VM.
    CHECK(a->cache().proc_attr == t.config.cache.proc_attr);
    CHECK(t.fs.config().node == "n1");

    t.fs.reap_queues();  // nothing queued: harmless
    auto started = Clock::now();
    t.fs.shutdown();
    t.fs.shutdown();  // idempotent
    CHECK(elapsed_ms(started) < 5000);
    auto job =
        std::make_shared<Job>([](Job&) {}, [](int, bool) {}, nullptr, Clock::time_point::max());
    CHECK_FALSE(a->executor().submit(job));
}
