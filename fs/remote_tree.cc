// /vmi/<node>/ of a node on another host: every directory and file below it stands for the
// one `cloudvmi serve` has there, and each operation is one request over the node's link
// (remote/remote_link.h). A small file's `cat` is one round trip: the open brings the
// file's bytes along. The node directory itself and its .cloudvmi/ are answered here, so
// that `ls /vmi` never waits for a host that is away.
#include <fcntl.h>

#include "fs/filesystem.h"
#include "fs/remote_attr.h"
#include "remote/remote_link.h"

namespace cloudvmi::fs {

namespace {

using remote::Message;
using remote::RemoteLink;

// What an open asks the remote to read at once: more than any proc or sys file.
constexpr uint64_t kPrefetch = 128 * 1024;

Message request(const char* op, const std::string& path, const Caller* who = nullptr) {
    Message m{{"op", op}, {"path", path}};
    if (who) m["who"] = encode_caller(*who);
    return m;
}

Message time_field(const AttrChange::Time& t) {
    return t.now ? Message("now") : Message(ns_of(t.value));
}

// An open file of the remote node. Its handle belongs to the connection it was opened on:
// once that is gone, so is the file (EIO), and a handle number of a later connection is
// never taken for it.
class RemoteHandle final : public FileHandle {
  public:
    RemoteHandle(std::shared_ptr<RemoteLink> link, uint64_t connection,
                 std::optional<uint64_t> handle, std::vector<uint8_t> prefetched, bool eof,
                 bool direct)
        : link_(std::move(link)),
          connection_(connection),
          handle_(handle),
          prefetched_(std::move(prefetched)),
          eof_(eof),
          direct_(direct) {}

    std::optional<std::span<const uint8_t>> read_cached(size_t size, off_t off) const override {
        auto have = prefetched_.size();
        auto start = static_cast<size_t>(off);
        if (off < 0 || (!eof_ && start + size > have)) return std::nullopt;
        if (start >= have) return std::span<const uint8_t>();
        return std::span<const uint8_t>(prefetched_.data() + start, std::min(size, have - start));
    }
    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t off) override {
        if (auto cached = read_cached(size, off))
            return std::vector<uint8_t>(cached->begin(), cached->end());
        if (!handle_) return make_error(EBADF, "not open for reading");
        auto answer = TRY(link_->call(
            Message{{"op", "pread"}, {"handle", *handle_}, {"offset", off}, {"size", size}},
            connection_));
        auto data = TRY(remote::field_bytes(answer, "data"));
        if (data.size() > size) return make_error(EPROTO, "the node read more than asked");
        return data;
    }
    ErrorOr<size_t> write(std::span<const uint8_t> data, off_t off, const Caller& who) override {
        if (!handle_) return make_error(EBADF, "not open for writing");
        Message m{{"op", "pwrite"},
                  {"handle", *handle_},
                  {"offset", off},
                  {"data", Message::binary({data.begin(), data.end()})},
                  {"who", encode_caller(who)}};
        auto answer = TRY(link_->call(std::move(m), connection_));
        auto written = TRY(remote::field_u64(answer, "written"));
        if (written > data.size()) return make_error(EPROTO, "the node wrote more than given");
        return static_cast<size_t>(written);
    }
    void release() override {
        if (handle_) link_->post(Message{{"op", "close"}, {"handle", *handle_}}, connection_);
    }
    bool direct_io() const override { return direct_; }

  private:
    std::shared_ptr<RemoteLink> link_;
    uint64_t connection_;
    std::optional<uint64_t> handle_;  // none: the whole file came with the open
    std::vector<uint8_t> prefetched_;
    bool eof_;
    bool direct_;
};

class RemoteNode : public Node {
  public:
    RemoteNode(RemotePeer& peer, std::string node, std::string path, RemoteAttr info)
        : peer_(peer),
          link_(peer.link),
          node_(std::move(node)),
          path_(std::move(path)),
          info_(info),
          fresh_until_(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                          std::chrono::duration<double>(info.attr.timeout))) {}

    std::string key() const override { return key_of(path_); }
    std::string child_key(const std::string& name) const override {
        return key_of(child_path(path_, name));
    }
    // After a rename the kernel keeps its inodes: they stand for the new paths.
    std::shared_ptr<Node> moved_to(const std::string& from, const std::string& to) const override {
        auto path = moved_path(key(), key_of(""), from, to);
        return path ? std::make_shared<RemoteNode>(peer_, node_, *path, info_) : nullptr;
    }
    VmExecutor* queue() const override { return peer_.queue.get(); }
    Exposure exposure() const override { return info_.exposure; }
    bool local_getattr() const override { return false; }
    double entry_timeout() const override { return info_.entry_timeout; }

    // The attributes a lookup or listing brought hold for as long as the remote said.
    ErrorOr<NodeAttr> getattr() override {
        if (Clock::now() < fresh_until_) return info_.attr;
        auto answer = TRY(link_->call(request("stat", path_)));
        return TRY(decode(answer)).attr;
    }
    std::optional<NodeAttr> known_attr() override { return info_.attr; }

    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        auto path = child_path(path_, name);
        auto answer = TRY(link_->call(request("stat", path)));
        return child(path, TRY(decode(answer)));
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller& who) override {
        auto m = request("list", path_, &who);
        m["plus"] = plus;
        auto answer = TRY(link_->call(std::move(m)));
        return entries(answer, plus);
    }
    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller& who) override {
        auto m = request("open", path_, &who);
        m["flags"] = flags;
        m["prefetch"] = (flags & O_ACCMODE) == O_RDONLY ? kPrefetch : 0;
        uint64_t connection = 0;
        auto answer = TRY(link_->call(std::move(m), std::nullopt, &connection));
        return handle(answer, connection);
    }
    ErrorOr<std::string> readlink() override {
        auto answer = TRY(link_->call(request("readlink", path_)));
        return remote::field_string(answer, "target");
    }
    ErrorOr<NodeAttr> setattr(const AttrChange& change, const Caller& who) override {
        auto m = request("setattr", path_, &who);
        if (change.size) m["size"] = *change.size;
        if (change.mode) m["mode"] = *change.mode;
        if (change.uid) m["uid"] = *change.uid;
        if (change.gid) m["gid"] = *change.gid;
        if (change.atime) m["atime"] = time_field(*change.atime);
        if (change.mtime) m["mtime"] = time_field(*change.mtime);
        auto answer = TRY(link_->call(std::move(m)));
        return TRY(decode(answer)).attr;
    }
    ErrorOr<std::shared_ptr<Node>> mkdir(const std::string& name, mode_t mode,
                                         const Caller& who) override {
        auto m = request("mkdir", path_, &who);
        m["name"] = name;
        m["mode"] = mode;
        auto answer = TRY(link_->call(std::move(m)));
        return child(child_path(path_, name), TRY(decode(answer)));
    }
    ErrorOr<std::shared_ptr<Node>> create(const std::string& name, mode_t mode, int flags,
                                          std::unique_ptr<FileHandle>& out,
                                          const Caller& who) override {
        auto m = request("create", path_, &who);
        m["name"] = name;
        m["mode"] = mode;
        m["flags"] = flags;
        uint64_t connection = 0;
        auto answer = TRY(link_->call(std::move(m), std::nullopt, &connection));
        auto info = TRY(decode(answer));
        out = TRY(handle(answer, connection));
        return child(child_path(path_, name), info);
    }
    ErrorOr<void> unlink(const std::string& name, const Caller& who) override {
        return remove("unlink", name, who);
    }
    ErrorOr<void> rmdir(const std::string& name, const Caller& who) override {
        return remove("rmdir", name, who);
    }
    ErrorOr<std::shared_ptr<Node>> symlink(const std::string& target, const std::string& name,
                                           const Caller& who) override {
        auto m = request("symlink", path_, &who);
        m["name"] = name;
        m["target"] = target;
        auto answer = TRY(link_->call(std::move(m)));
        return child(child_path(path_, name), TRY(decode(answer)));
    }
    ErrorOr<void> rename(const std::string& name, Node& new_parent, const std::string& new_name,
                         unsigned flags, const Caller& who) override {
        auto* to = dynamic_cast<RemoteNode*>(&new_parent);
        if (to == nullptr || &to->peer_ != &peer_) return make_error(EXDEV, "rename across nodes");
        auto m = request("rename", path_, &who);
        m["name"] = name;
        m["to_path"] = to->path_;
        m["to_name"] = new_name;
        m["flags"] = flags;
        TRY(link_->call(std::move(m)));
        return {};
    }

  protected:
    static ErrorOr<RemoteAttr> decode(const Message& answer) {
        if (!remote::has_field(answer, "attr"))
            return make_error(EPROTO, "answer without attributes");
        return decode_remote_attr(answer["attr"]);
    }
    std::string key_of(const std::string& path) const { return "r:" + node_ + "/" + path; }
    ErrorOr<void> remove(const char* op, const std::string& name, const Caller& who) {
        auto m = request(op, path_, &who);
        m["name"] = name;
        TRY(link_->call(std::move(m)));
        return {};
    }
    std::shared_ptr<Node> child(std::string path, const RemoteAttr& info) const {
        return std::make_shared<RemoteNode>(peer_, node_, std::move(path), info);
    }
    ErrorOr<std::vector<DirEntry>> entries(const Message& answer, bool plus) const {
        if (!remote::has_field(answer, "entries") || !answer["entries"].is_array())
            return make_error(EPROTO, "listing without entries");
        std::vector<DirEntry> out;
        for (const auto& e : answer["entries"]) {
            auto name = TRY(remote::field_string(e, "name"));
            if (name.empty() || name.find_first_of(std::string("/\0", 2)) != std::string::npos)
                return make_error(EPROTO, "listing with a bad name");
            bool self_or_parent = name == "." || name == "..";
            DirEntry entry{name, static_cast<mode_t>(TRY(remote::field_u64(e, "type"))) & S_IFMT,
                           nullptr};
            if (plus && !self_or_parent && remote::has_field(e, "attr"))
                entry.node = child(child_path(path_, name), TRY(decode_remote_attr(e["attr"])));
            out.push_back(std::move(entry));
        }
        return out;
    }
    ErrorOr<std::unique_ptr<FileHandle>> handle(const Message& answer, uint64_t connection) const {
        std::optional<uint64_t> hid;
        if (remote::has_field(answer, "handle")) hid = TRY(remote::field_u64(answer, "handle"));
        std::vector<uint8_t> data;
        if (remote::has_field(answer, "data")) data = TRY(remote::field_bytes(answer, "data"));
        bool eof = remote::has_field(answer, "eof") && TRY(remote::field_bool(answer, "eof"));
        if (!hid && !eof) return make_error(EPROTO, "open answered without a handle");
        bool dio = !remote::has_field(answer, "dio") || TRY(remote::field_bool(answer, "dio"));
        return std::unique_ptr<FileHandle>(
            std::make_unique<RemoteHandle>(link_, connection, hid, std::move(data), eof, dio));
    }

    RemotePeer& peer_;  // the Filesystem's, which outlives every node
    std::shared_ptr<RemoteLink> link_;
    std::string node_;
    std::string path_;
    RemoteAttr info_;
    Clock::time_point fresh_until_;
};

// /vmi/<node>/ itself: its listing is the remote's, its attributes and .cloudvmi/ local.
class RemoteNodeDir final : public RemoteNode {
  public:
    RemoteNodeDir(Filesystem& fs, RemotePeer& peer, const std::string& node)
        : RemoteNode(peer, node, "", RemoteAttr{NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}}),
          fs_(fs) {}
    std::string key() const override { return "n:" + node_; }
    bool local_getattr() const override { return true; }
    ErrorOr<NodeAttr> getattr() override { return info_.attr; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        if (name == ".cloudvmi") return make_node_info_dir(fs_, node_);
        return RemoteNode::lookup(name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller& who) override {
        auto remote_entries = RemoteNode::readdir(plus, who);
        std::vector<DirEntry> out;
        if (remote_entries) {
            for (auto& e : *remote_entries) {
                if (e.name != ".cloudvmi") out.push_back(std::move(e));
            }
        } else if (int err = remote_entries.error().code();
                   err != ENOTCONN && err != EIO && err != ETIMEDOUT) {
            return std::unexpected(remote_entries.error());
        }
        // A node that is away lists nothing but its status, which says why.
        out.push_back(
            DirEntry{".cloudvmi", S_IFDIR, plus ? make_node_info_dir(fs_, node_) : nullptr});
        return out;
    }

  private:
    Filesystem& fs_;
};

}  // namespace

std::shared_ptr<Node> make_remote_node_dir(Filesystem& fs, RemotePeer& peer,
                                           const std::string& node) {
    return std::make_shared<RemoteNodeDir>(fs, peer, node);
}

}  // namespace cloudvmi::fs
