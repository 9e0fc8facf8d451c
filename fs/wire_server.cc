#include "fs/wire_server.h"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "common/log.h"
#include "common/paths.h"
#include "fs/remote_attr.h"
#include "remote/wire.h"

namespace cloudvmi::fs {

namespace {

using remote::Message;

constexpr size_t kMaxPath = 4096;
constexpr size_t kMaxName = 255;
constexpr size_t kPathCacheEntries = 4096;
constexpr size_t kMaxHandles = 4096;

Error bad_request(const std::string& what) {
    return Error::refusal(EINVAL, "bad request: " + what);
}

// One component of a path: never empty, "." or "..", so that no request can name anything
// but a node below the served directory.
bool is_component(const std::string& name) {
    return !name.empty() && name != "." && name != ".." && name.size() <= kMaxName &&
           name.find_first_of(std::string("/\0", 2)) == std::string::npos;
}

// A path below the served node directory ("" is the directory itself).
ErrorOr<std::vector<std::string>> split_path(const std::string& path) {
    if (path.size() > kMaxPath) return std::unexpected(Error::refusal(ENAMETOOLONG, "path"));
    std::vector<std::string> parts;
    if (path.empty()) return parts;
    size_t start = 0;
    for (;;) {
        size_t slash = path.find('/', start);
        std::string part = path.substr(start, slash == std::string::npos ? slash : slash - start);
        if (!is_component(part)) return std::unexpected(bad_request("path '" + path + "'"));
        parts.push_back(std::move(part));
        if (slash == std::string::npos) return parts;
        start = slash + 1;
    }
}

std::string join(const std::vector<std::string>& parts, size_t n) {
    std::string out;
    for (size_t i = 0; i < n; ++i)
        out += (i ? "/" : "") + parts[i];
    return out;
}

ErrorOr<std::string> entry_name(const Message& m, const char* field) {
    auto name = TRY(remote::field_string(m, field));
    if (!is_component(name))
        return std::unexpected(bad_request(std::string(field) + " '" + name + "'"));
    return name;
}

ErrorOr<AttrChange::Time> change_time(const Message& m, const char* field) {
    AttrChange::Time t;
    if (m[field].is_string() && m[field].get<std::string>() == "now") {
        t.now = true;
        return t;
    }
    int64_t ns = TRY(remote::field_i64(m, field));
    if (ns % 1000000000 < 0) return std::unexpected(bad_request("negative time"));
    t.value = timespec_of(ns);
    return t;
}

ErrorOr<AttrChange> attr_change(const Message& m) {
    AttrChange c;
    if (remote::has_field(m, "size")) {
        int64_t size = TRY(remote::field_i64(m, "size"));
        if (size < 0) return std::unexpected(bad_request("negative size"));
        c.size = size;
    }
    if (remote::has_field(m, "mode"))
        c.mode = static_cast<mode_t>(TRY(remote::field_u64(m, "mode")));
    if (remote::has_field(m, "uid")) c.uid = static_cast<uid_t>(TRY(remote::field_u64(m, "uid")));
    if (remote::has_field(m, "gid")) c.gid = static_cast<gid_t>(TRY(remote::field_u64(m, "gid")));
    if (remote::has_field(m, "atime")) c.atime = TRY(change_time(m, "atime"));
    if (remote::has_field(m, "mtime")) c.mtime = TRY(change_time(m, "mtime"));
    return c;
}

// What a read of `size` bytes at `off` gives: the handle's own bytes when it holds them,
// else a read through the guest.
ErrorOr<std::vector<uint8_t>> read_at(FileHandle& handle, size_t size, off_t off) {
    if (auto cached = handle.read_cached(size, off))
        return std::vector<uint8_t>(cached->begin(), cached->end());
    return handle.read(size, off);
}

// A file opened for the peer; released when it closes it or hangs up.
struct ServedHandle {
    ServedHandle(std::shared_ptr<Node> n, std::unique_ptr<FileHandle> h)
        : node(std::move(n)), handle(std::move(h)) {}
    ~ServedHandle() { handle->release(); }
    std::shared_ptr<Node> node;
    std::unique_ptr<FileHandle> handle;
};

// Shared with the jobs it queues: a job may still run, or be answered ESHUTDOWN, after
// the peer hung up and run() returned; its answer then goes nowhere.
class WireServer : public std::enable_shared_from_this<WireServer> {
  public:
    WireServer(Filesystem& fs, std::string node, int in_fd, int out_fd)
        : fs_(fs),
          node_(std::move(node)),
          in_fd_(in_fd),
          out_fd_(out_fd),
          root_(make_node_dir(fs, node_)) {}

    int run();

  private:
    using OpFn = ErrorOr<Message> (WireServer::*)(const Message&, const Caller&);
    enum class Target { kPath, kHandle };
    struct Op {
        const char* name;
        OpFn fn;
        Target target;
        bool needs_caller;  // the node operation takes the caller (policy, audit)
    };
    static const Op kOps[];

    ErrorOr<void> greet(remote::FrameReader& reader);
    void handle_request(Message m);
    void execute(uint64_t id, Vm* vm, std::function<ErrorOr<Message>()> work);
    void respond(const Message& m);
    Vm* vm_of(const std::string& path) const;
    ErrorOr<std::shared_ptr<Node>> resolve(const std::string& path);
    void forget_below(const std::string& path);
    ErrorOr<std::shared_ptr<ServedHandle>> handle_of(const Message& m);
    ErrorOr<uint64_t> keep_handle(std::shared_ptr<Node> node, std::unique_ptr<FileHandle> h);

    ErrorOr<Message> op_stat(const Message& m, const Caller& who);
    ErrorOr<Message> op_list(const Message& m, const Caller& who);
    ErrorOr<Message> op_readlink(const Message& m, const Caller& who);
    ErrorOr<Message> op_open(const Message& m, const Caller& who);
    ErrorOr<Message> op_pread(const Message& m, const Caller& who);
    ErrorOr<Message> op_pwrite(const Message& m, const Caller& who);
    ErrorOr<Message> op_close(const Message& m, const Caller& who);
    ErrorOr<Message> op_setattr(const Message& m, const Caller& who);
    ErrorOr<Message> op_mkdir(const Message& m, const Caller& who);
    ErrorOr<Message> op_create(const Message& m, const Caller& who);
    ErrorOr<Message> op_unlink(const Message& m, const Caller& who);
    ErrorOr<Message> op_rmdir(const Message& m, const Caller& who);
    ErrorOr<Message> op_symlink(const Message& m, const Caller& who);
    ErrorOr<Message> op_rename(const Message& m, const Caller& who);

    Filesystem& fs_;
    const std::string node_;
    const int in_fd_, out_fd_;
    const std::shared_ptr<Node> root_;

    // Each mutex below is a leaf: none is held while another is taken or a node is called.
    std::mutex out_mutex_;     // whole frames on out_fd_
    bool out_broken_ = false;  // the peer is gone (or run() ended): answers go nowhere
    std::string peer_host_;    // the mounting host, as its hello named it
    std::mutex cache_mutex_;
    struct Cached {
        std::shared_ptr<Node> node;
        Clock::time_point expires;
    };
    std::map<std::string, Cached> cache_;  // resolved paths, kept as long as the kernel would
    std::mutex handles_mutex_;
    std::map<uint64_t, std::shared_ptr<ServedHandle>> handles_;
    uint64_t next_handle_ = 1;
};

const WireServer::Op WireServer::kOps[] = {
    {"stat", &WireServer::op_stat, Target::kPath, false},
    {"list", &WireServer::op_list, Target::kPath, true},
    {"readlink", &WireServer::op_readlink, Target::kPath, false},
    {"open", &WireServer::op_open, Target::kPath, true},
    {"pread", &WireServer::op_pread, Target::kHandle, false},
    {"pwrite", &WireServer::op_pwrite, Target::kHandle, true},
    {"close", &WireServer::op_close, Target::kHandle, false},
    {"setattr", &WireServer::op_setattr, Target::kPath, true},
    {"mkdir", &WireServer::op_mkdir, Target::kPath, true},
    {"create", &WireServer::op_create, Target::kPath, true},
    {"unlink", &WireServer::op_unlink, Target::kPath, true},
    {"rmdir", &WireServer::op_rmdir, Target::kPath, true},
    {"symlink", &WireServer::op_symlink, Target::kPath, true},
    {"rename", &WireServer::op_rename, Target::kPath, true},
};

void WireServer::respond(const Message& m) {
    auto frame = remote::encode_frame(m);
    if (frame.size() > remote::kMaxFrame + 4) {
        // Too large for the peer to take (a huge listing): the request fails, not the link.
        auto id = remote::field_u64(m, "id");
        frame = remote::encode_frame(remote::error_response(
            id ? *id : 0, Error::refusal(EOVERFLOW, "the answer is larger than one frame (" +
                                                        std::to_string(frame.size()) + " bytes)")));
    }
    std::lock_guard lock(out_mutex_);
    // A failed write: the peer is gone, and the read side ends too.
    if (!out_broken_ && !write_all(out_fd_, frame, "answering the mount")) out_broken_ = true;
}

ErrorOr<void> WireServer::greet(remote::FrameReader& reader) {
    uint8_t buf[4096];
    for (;;) {
        auto hello = TRY(reader.next());
        if (hello) {
            auto answer = remote::answer_hello(*hello, node_);
            auto host = remote::field_string(*hello, "host");
            peer_host_ = host && !host->empty() ? host->substr(0, 255) : "(unnamed host)";
            respond(answer ? *answer : remote::error_response(0, answer.error()));
            if (!answer) return std::unexpected(answer.error());
            return {};
        }
        ssize_t r = ::read(in_fd_, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return make_error(ECONNRESET, "the peer hung up before its hello");
        reader.feed(std::span<const uint8_t>(buf, size_t(r)));
    }
}

int WireServer::run() {
    remote::FrameReader reader;
    if (auto greeted = greet(reader); !greeted) {
        std::fprintf(stderr, "cloudvmi serve: %s\n", greeted.error().message().c_str());
        return 1;
    }
    std::atomic<bool> stop{false};
    std::thread reaper([&] {
        while (!stop) {
            fs_.reap_queues();
            std::this_thread::sleep_for(Millis(100));
        }
    });
    int rc = 0;
    std::vector<uint8_t> buf(1 << 16);
    for (;;) {
        auto message = reader.next();
        if (!message) {
            std::fprintf(stderr, "cloudvmi serve: %s\n", message.error().message().c_str());
            rc = 1;
            break;
        }
        if (message->has_value()) {
            handle_request(std::move(**message));
            continue;
        }
        ssize_t r = ::read(in_fd_, buf.data(), buf.size());
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;  // the peer hung up
        reader.feed(std::span<const uint8_t>(buf.data(), size_t(r)));
    }
    stop = true;
    reaper.join();
    {
        std::lock_guard lock(out_mutex_);
        out_broken_ = true;
    }
    {
        std::lock_guard lock(handles_mutex_);
        handles_.clear();
    }
    return rc;
}

void WireServer::handle_request(Message m) {
    auto id = remote::field_u64(m, "id");
    if (!id) {
        respond(remote::error_response(0, bad_request(id.error().message())));
        return;
    }
    auto op_name = remote::field_string(m, "op");
    if (!op_name) {
        respond(remote::error_response(*id, bad_request(op_name.error().message())));
        return;
    }
    if (*op_name == "ping") {
        VmSet* set = fs_.find_node(node_);
        respond(Message{{"id", *id}, {"vms", set ? set->list().size() : 0}});
        return;
    }
    const Op* op = nullptr;
    for (const auto& candidate : kOps) {
        if (*op_name == candidate.name) op = &candidate;
    }
    if (op == nullptr) {
        respond(remote::error_response(
            *id, Error::refusal(EOPNOTSUPP, "unknown operation '" + *op_name + "'")));
        return;
    }
    // Who asks decides what the policy allows: never assumed (it would be root).
    Caller who;
    if (op->needs_caller || remote::has_field(m, "who")) {
        auto decoded = remote::has_field(m, "who")
                           ? decode_caller(m["who"])
                           : ErrorOr<Caller>(std::unexpected(Error(EPROTO, "no caller")));
        if (!decoded) {
            respond(remote::error_response(*id, bad_request(decoded.error().message())));
            return;
        }
        who = std::move(*decoded);
        who.host = peer_host_;
    }
    Vm* vm = nullptr;
    if (op->target == Target::kPath) {
        auto path = remote::field_string(m, "path");
        if (!path) {
            respond(remote::error_response(*id, bad_request(path.error().message())));
            return;
        }
        vm = vm_of(*path);
    } else {
        auto handle = handle_of(m);
        if (!handle) {
            respond(remote::error_response(*id, handle.error()));
            return;
        }
        vm = (*handle)->node->vm();
    }
    execute(*id, vm, [self = shared_from_this(), op, m = std::move(m), who = std::move(who)] {
        return ((*self).*(op->fn))(m, who);
    });
}

void WireServer::execute(uint64_t id, Vm* vm, std::function<ErrorOr<Message>()> work) {
    auto answer_with = [self = shared_from_this(), id](const ErrorOr<Message>& result) {
        if (!result) {
            self->respond(remote::error_response(id, result.error()));
            return;
        }
        Message out = *result;
        out["id"] = id;
        self->respond(out);
    };
    if (vm == nullptr) {
        answer_with(work());
        return;
    }
    auto deadline = Clock::now() + Millis(fs_.config().request_timeout_ms);
    auto job = std::make_shared<Job>(
        [vm, work, answer_with](Job& self) {
            auto start = Clock::now();
            auto result = work();
            vm->record(elapsed_ms(start), result ? nullptr : &result.error());
            self.answer([&] { answer_with(result); });
        },
        [self = shared_from_this(), id](int err, bool ran) {
            self->respond(remote::error_response(
                id, Error(err, ran ? "request interrupted" : "request dropped")));
        },
        nullptr, deadline);
    if (!vm->executor().submit(job))
        respond(remote::error_response(id, Error::unavailable(EAGAIN, "the VM's queue is full")));
}

Vm* WireServer::vm_of(const std::string& path) const {
    VmSet* set = fs_.find_node(node_);
    if (set == nullptr) return nullptr;
    return set->find(path.substr(0, path.find('/')));
}

ErrorOr<std::shared_ptr<Node>> WireServer::resolve(const std::string& path) {
    auto parts = TRY(split_path(path));
    std::shared_ptr<Node> node = root_;
    size_t done = 0;
    auto now = Clock::now();
    {
        std::lock_guard lock(cache_mutex_);
        for (size_t k = parts.size(); k > 0 && done == 0; --k) {
            auto it = cache_.find(join(parts, k));
            if (it != cache_.end() && it->second.expires > now) {
                node = it->second.node;
                done = k;
            }
        }
    }
    for (size_t i = done; i < parts.size(); ++i) {
        node = TRY(node->lookup(parts[i]));
        auto expires = now + std::chrono::duration_cast<Clock::duration>(
                                 std::chrono::duration<double>(node->entry_timeout()));
        std::lock_guard lock(cache_mutex_);
        if (cache_.size() >= kPathCacheEntries) cache_.clear();
        cache_[join(parts, i + 1)] = Cached{node, expires};
    }
    return node;
}

void WireServer::forget_below(const std::string& path) {
    std::lock_guard lock(cache_mutex_);
    cache_.erase(path);
    // "a/..." sort together, but not next to "a": "a.old" comes between.
    std::string below = path + "/";
    for (auto it = cache_.lower_bound(below); it != cache_.end() && it->first.starts_with(below);)
        it = cache_.erase(it);
}

ErrorOr<std::shared_ptr<ServedHandle>> WireServer::handle_of(const Message& m) {
    auto hid = remote::field_u64(m, "handle");
    if (!hid) return std::unexpected(bad_request(hid.error().message()));
    std::lock_guard lock(handles_mutex_);
    auto it = handles_.find(*hid);
    if (it == handles_.end()) return make_error(EBADF, "no open handle " + std::to_string(*hid));
    return it->second;
}

ErrorOr<uint64_t> WireServer::keep_handle(std::shared_ptr<Node> node,
                                          std::unique_ptr<FileHandle> h) {
    auto served = std::make_shared<ServedHandle>(std::move(node), std::move(h));
    std::lock_guard lock(handles_mutex_);
    if (handles_.size() >= kMaxHandles)
        return std::unexpected(Error::refusal(EMFILE, "too many files open by the peer"));
    uint64_t hid = next_handle_++;
    handles_[hid] = std::move(served);
    return hid;
}

// --- operations (on the VM's queue when the path is in a VM) ---

ErrorOr<Message> WireServer::op_stat(const Message& m, const Caller&) {
    auto node = TRY(resolve(TRY(remote::field_string(m, "path"))));
    auto attr = TRY(node->getattr());
    return Message{{"attr", encode_remote_attr(attr, *node)}};
}

ErrorOr<Message> WireServer::op_list(const Message& m, const Caller& who) {
    auto node = TRY(resolve(TRY(remote::field_string(m, "path"))));
    bool plus = remote::has_field(m, "plus") && TRY(remote::field_bool(m, "plus"));
    auto entries = TRY(node->readdir(plus, who));
    Message list = Message::array();
    for (const auto& e : entries) {
        Message entry{{"name", e.name}, {"type", e.type}};
        if (e.node) {
            if (auto attr = e.node->known_attr())
                entry["attr"] = encode_remote_attr(*attr, *e.node);
        }
        list.push_back(std::move(entry));
    }
    return Message{{"entries", std::move(list)}};
}

ErrorOr<Message> WireServer::op_readlink(const Message& m, const Caller&) {
    auto node = TRY(resolve(TRY(remote::field_string(m, "path"))));
    return Message{{"target", TRY(node->readlink())}};
}

ErrorOr<Message> WireServer::op_open(const Message& m, const Caller& who) {
    auto node = TRY(resolve(TRY(remote::field_string(m, "path"))));
    int flags = static_cast<int>(TRY(remote::field_i64(m, "flags")));
    uint64_t want = remote::has_field(m, "prefetch") ? TRY(remote::field_u64(m, "prefetch")) : 0;
    want = std::min<uint64_t>(want, remote::kMaxReadChunk);
    auto handle = TRY(node->open(flags, who));
    Message out{{"dio", handle->direct_io()}};
    // A read-only open answers with the file's first bytes: a small file's `cat` is then
    // this one round trip. A failed read is left for the peer's own read to report.
    if ((flags & O_ACCMODE) == O_RDONLY && want > 0) {
        if (auto head = read_head(*handle, want)) {
            out["data"] = Message::binary(std::move(head->data));
            if (head->eof) {
                handle->release();
                out["eof"] = true;
                return out;
            }
        }
    }
    out["handle"] = TRY(keep_handle(std::move(node), std::move(handle)));
    return out;
}

ErrorOr<Message> WireServer::op_pread(const Message& m, const Caller&) {
    auto served = TRY(handle_of(m));
    int64_t off = TRY(remote::field_i64(m, "offset"));
    uint64_t size = std::min<uint64_t>(TRY(remote::field_u64(m, "size")), remote::kMaxReadChunk);
    if (off < 0) return std::unexpected(bad_request("negative offset"));
    return Message{{"data", Message::binary(TRY(read_at(*served->handle, size, off)))}};
}

ErrorOr<Message> WireServer::op_pwrite(const Message& m, const Caller& who) {
    auto served = TRY(handle_of(m));
    int64_t off = TRY(remote::field_i64(m, "offset"));
    auto data = TRY(remote::field_bytes(m, "data"));
    if (off < 0) return std::unexpected(bad_request("negative offset"));
    size_t written = TRY(served->handle->write(data, off, who));
    return Message{{"written", written}};
}

ErrorOr<Message> WireServer::op_close(const Message& m, const Caller&) {
    uint64_t hid = TRY(remote::field_u64(m, "handle"));
    std::shared_ptr<ServedHandle> closing;
    {
        std::lock_guard lock(handles_mutex_);
        auto it = handles_.find(hid);
        if (it == handles_.end()) return make_error(EBADF, "no open handle " + std::to_string(hid));
        closing = std::move(it->second);
        handles_.erase(it);
    }
    return Message::object();  // released here, on the VM's queue, when `closing` goes
}

ErrorOr<Message> WireServer::op_setattr(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto node = TRY(resolve(path));
    auto change = TRY(attr_change(m));
    auto attr = TRY(node->setattr(change, who));
    return Message{{"attr", encode_remote_attr(attr, *node)}};
}

ErrorOr<Message> WireServer::op_mkdir(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    auto parent = TRY(resolve(path));
    auto mode = static_cast<mode_t>(TRY(remote::field_u64(m, "mode")));
    auto child = TRY(parent->mkdir(name, mode, who));
    auto attr = TRY(child->getattr());
    return Message{{"attr", encode_remote_attr(attr, *child)}};
}

ErrorOr<Message> WireServer::op_create(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    auto parent = TRY(resolve(path));
    auto mode = static_cast<mode_t>(TRY(remote::field_u64(m, "mode")));
    int flags = static_cast<int>(TRY(remote::field_i64(m, "flags")));
    std::unique_ptr<FileHandle> handle;
    auto child = TRY(parent->create(name, mode, flags, handle, who));
    if (!handle) return make_error(EIO, "create opened nothing");
    bool dio = handle->direct_io();
    auto attr = child->getattr();
    if (!attr) {
        handle->release();  // the peer never hears of it
        return std::unexpected(attr.error());
    }
    Message out{{"attr", encode_remote_attr(*attr, *child)}, {"dio", dio}};
    out["handle"] = TRY(keep_handle(child, std::move(handle)));
    return out;
}

ErrorOr<Message> WireServer::op_unlink(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    TRY(TRY(resolve(path))->unlink(name, who));
    forget_below(child_path(path, name));
    return Message::object();
}

ErrorOr<Message> WireServer::op_rmdir(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    TRY(TRY(resolve(path))->rmdir(name, who));
    forget_below(child_path(path, name));
    return Message::object();
}

ErrorOr<Message> WireServer::op_symlink(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    auto target = TRY(remote::field_string(m, "target"));
    if (target.size() > kMaxPath) return std::unexpected(Error::refusal(ENAMETOOLONG, "target"));
    auto child = TRY(TRY(resolve(path))->symlink(target, name, who));
    auto attr = TRY(child->getattr());
    return Message{{"attr", encode_remote_attr(attr, *child)}};
}

ErrorOr<Message> WireServer::op_rename(const Message& m, const Caller& who) {
    auto path = TRY(remote::field_string(m, "path"));
    auto name = TRY(entry_name(m, "name"));
    auto to_path = TRY(remote::field_string(m, "to_path"));
    auto to_name = TRY(entry_name(m, "to_name"));
    auto flags = static_cast<unsigned>(TRY(remote::field_u64(m, "flags")));
    // The queue this runs on is the source's VM: a rename into another VM is not one.
    if (vm_of(path) != vm_of(to_path)) return make_error(EXDEV, "rename across VMs");
    auto from = TRY(resolve(path));
    auto to = TRY(resolve(to_path));
    TRY(from->rename(name, *to, to_name, flags, who));
    forget_below(child_path(path, name));
    forget_below(child_path(to_path, to_name));
    return Message::object();
}

}  // namespace

std::optional<FileHead> read_head(FileHandle& handle, uint64_t want) {
    FileHead head;
    while (head.data.size() < want) {
        size_t ask = want - head.data.size();
        auto off = static_cast<off_t>(head.data.size());
        auto piece = read_at(handle, ask, off);
        if (!piece) {
            if (head.data.empty()) return std::nullopt;
            return head;  // what was read so far; the peer's next read meets the error
        }
        if (piece->empty()) {
            head.eof = true;
            return head;
        }
        head.data.insert(head.data.end(), piece->begin(), piece->end());
    }
    return head;
}

int serve_wire(Filesystem& fs, const std::string& node, int in_fd, int out_fd) {
    auto server = std::make_shared<WireServer>(fs, node, in_fd, out_fd);
    return server->run();
}

}  // namespace cloudvmi::fs
