// proc/, sys/ and root/ of a VM: the guest's own file namespace, mirrored generically
// (every path the guest has, not a hand-picked list). Every operation here runs on the
// VM's queue and becomes one or a few batches of guest syscalls.
#include <dirent.h>
#include <fcntl.h>

#include <cstdio>
#include <mutex>

#include "common/log.h"
#include "common/strings.h"
#include "fs/consuming_reads.h"
#include "fs/contained_link.h"
#include "fs/filesystem.h"

namespace cloudvmi::fs {

namespace {

const char* tree_path(GuestTree t) {
    switch (t) {
        case GuestTree::kProc:
            return "/proc";
        case GuestTree::kSys:
            return "/sys";
        case GuestTree::kRoot:
            return "/";
    }
    return "/";
}

const char* tree_name(GuestTree t) {
    switch (t) {
        case GuestTree::kProc:
            return "proc";
        case GuestTree::kSys:
            return "sys";
        case GuestTree::kRoot:
            return "root";
    }
    return "?";
}

std::string join(const std::string& dir, const std::string& name) {
    return dir == "/" ? "/" + name : dir + "/" + name;
}

template <class T>
ErrorOr<T> from_vm(ErrorOr<T> r) {
    if (!r) return std::unexpected(vm_error(r.error()));
    return r;
}

struct stat to_stat(const GuestStat& g) {
    struct stat st {};
    st.st_mode = g.mode;
    st.st_nlink = static_cast<nlink_t>(g.nlink);
    st.st_uid = g.uid;
    st.st_gid = g.gid;
    st.st_rdev = g.rdev;
    st.st_size = g.size;
    st.st_blksize = g.blksize > 0 ? g.blksize : 4096;
    st.st_blocks = g.blocks;
    st.st_atim = {g.atime_sec, g.atime_nsec};
    st.st_mtim = {g.mtime_sec, g.mtime_nsec};
    st.st_ctim = {g.ctime_sec, g.ctime_nsec};
    return st;
}

// The number of the VM's newest shadow (BatchOutcome::shadow of what it runs).
uint64_t current_shadow(Vm& vm) {
    return vm.session().status().shadows_created;
}

// Read with the open: enough for any proc or sys file, and for cat's first read.
constexpr size_t kReadAhead = 128 * 1024;

// An open guest file: the guest fd lives in the shadow for the life of the handle, so
// sequential reads of a big or changing file see one consistent file. The first chunk is
// read together with the open (one round trip for a whole proc file), and the close rides
// along with the VM's next batch.
class GuestFileHandle final : public FileHandle {
  public:
    GuestFileHandle(Vm& vm, std::string path, GuestFileOps::OpenedFile opened)
        : vm_(vm),
          path_(std::move(path)),
          fd_(opened.fd),
          head_(std::move(opened.head)),
          head_is_all_(opened.eof) {}

    // The head answers when it holds the whole file or the whole range asked for. It never
    // changes after the open, so any thread may read it.
    std::optional<std::span<const uint8_t>> read_cached(size_t size, off_t offset) const override {
        size = std::min(size, GuestFileOps::kMaxTransfer);
        size_t off = static_cast<size_t>(offset);
        if (!head_is_all_ && off + size > head_.size()) return std::nullopt;
        if (off >= head_.size()) return std::span<const uint8_t>{};
        return std::span<const uint8_t>(head_).subspan(off, std::min(size, head_.size() - off));
    }

    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t offset) override {
        if (auto cached = read_cached(size, offset))
            return std::vector<uint8_t>(cached->begin(), cached->end());
        TRY(revalidate());
        size = std::min(size, GuestFileOps::kMaxTransfer);
        auto data = vm_.files().pread(fd_, size, static_cast<uint64_t>(offset));
        if (!data && !data.error().from_guest() && data.error().code() == EBADF) {
            // The shadow was discarded after revalidate() looked and replaced by the read
            // itself: the fd belonged to the old one. Open again in the new one, once.
            fd_ = GuestFd{};
            TRY(revalidate());
            data = vm_.files().pread(fd_, size, static_cast<uint64_t>(offset));
        }
        return from_vm(std::move(data));
    }

    void release() override {
        if (fd_.fd >= 0) vm_.files().close_soon(fd_);  // dropped if its shadow is gone
        fd_ = GuestFd{};
    }

  private:
    // A new shadow does not have the old one's fds: open the file again there.
    ErrorOr<void> revalidate() {
        if (fd_.fd >= 0 && fd_.shadow == current_shadow(vm_)) return {};
        fd_ = TRY(from_vm(vm_.files().open(path_, GuestFileOps::kOpenForReading)));
        return {};
    }

    Vm& vm_;
    std::string path_;
    GuestFd fd_;
    std::vector<uint8_t> head_;
    bool head_is_all_;
};

// /proc/self and /proc/thread-self name the shadow, not anything an operator means.
bool names_the_shadow(const std::string& path) {
    for (const char* p : {"/proc/self", "/proc/thread-self"}) {
        std::string prefix(p);
        if (path == prefix || path.rfind(prefix + "/", 0) == 0) return true;
    }
    return false;
}

ErrorOr<void> refuse_shadow_paths(const std::string& path) {
    if (names_the_shadow(path))
        return make_error(EACCES, path + " names cloudvmi's own process in the guest");
    return {};
}

// The same for /proc/PID of the VM's shadow, by number.
ErrorOr<void> refuse_shadow_paths(Vm& vm, const std::string& path) {
    TRY(refuse_shadow_paths(path));
    int64_t shadow = vm.session().status().shadow_pid;
    if (shadow <= 0) return {};
    std::string proc = "/proc/" + std::to_string(shadow);
    if (path == proc || path.starts_with(proc + "/"))
        return make_error(EACCES, path + " names cloudvmi's own process in the guest");
    return {};
}

// How long the close of a written file may wait in the VM's queue before it is left to
// the VM's next batch.
constexpr auto kWrittenCloseWait = std::chrono::seconds(30);

// Closes a guest fd that was open for writing as soon as the VM's queue reaches it, not
// with the VM's next batch (which may be hours away): until it is closed the guest sees
// the file still open for writing, so that running or loading what was just copied in
// fails with ETXTBSY, and watchers waiting for inotify's IN_CLOSE_WRITE see nothing.
// release() runs on a FUSE thread and must not wait for the guest, hence the job.
void close_written(Vm& vm, GuestFd fd) {
    auto job = std::make_shared<Job>(
        [&vm, fd](Job&) {
            // EBADF: its shadow was replaced and took its fds along; nothing left to close.
            if (auto closed = vm.files().close(fd); !closed && closed.error().code() != EBADF) {
                LOG_DEBUG("closing a written file: %s", closed.error().describe().c_str());
            }
        },
        [&vm, fd](int, bool ran) {
            if (!ran) vm.files().close_soon(fd);
        },
        nullptr, Clock::now() + kWrittenCloseWait);
    if (!vm.executor().submit(job)) vm.files().close_soon(fd);
}

// A guest file open for writing: every write call is decided by the policy and audited
// (fs/change_gate.h), then written at its offset (or appended, for O_APPEND).
class GuestWriteHandle final : public FileHandle {
  public:
    GuestWriteHandle(Vm& vm, std::string path, GuestFd fd, WriteMode mode)
        : vm_(vm), path_(std::move(path)), fd_(fd), mode_(mode) {
        mode_.truncate = mode_.exclusive = false;  // for opening it again
    }

    ErrorOr<std::vector<uint8_t>> read(size_t size, off_t offset) override {
        if (!mode_.read_too) return make_error(EBADF, "opened write-only");
        size = std::min(size, GuestFileOps::kMaxTransfer);
        return on_fd([&] { return vm_.files().pread(fd_, size, static_cast<uint64_t>(offset)); });
    }

    ErrorOr<size_t> write(std::span<const uint8_t> data, off_t offset, const Caller& who) override {
        data = data.subspan(0, std::min(data.size(), GuestFileOps::kMaxTransfer));
        ChangeAsk ask;
        ask.op = policy::Operation::kWrite;
        ask.path = path_;
        ask.value.assign(reinterpret_cast<const char*>(data.data()), data.size());
        // An append lands at the guest's end of file, not where the host thinks it is.
        uint64_t at = static_cast<uint64_t>(offset);
        if (mode_.append) {
            auto st = on_fd([&] { return vm_.files().fstat(fd_); });
            if (!st) return std::unexpected(st.error());
            at = static_cast<uint64_t>(std::max<int64_t>(st->size, 0));
        }
        ask.offset = at;
        ask.size = at + data.size();
        ask.data = data;
        std::vector<uint8_t> bytes(data.begin(), data.end());
        return vm_.gate().apply(vm_.scope(), who, ask, [&] {
            return on_fd([&] {
                return mode_.append ? vm_.files().write(fd_, bytes)
                                    : vm_.files().pwrite(fd_, bytes, static_cast<uint64_t>(offset));
            });
        });
    }

    void release() override {
        if (fd_.fd >= 0) close_written(vm_, fd_);
        fd_ = GuestFd{};
    }

  private:
    // A new shadow does not have the old one's fds: open the file again there (without
    // truncating or creating it again).
    ErrorOr<void> revalidate() {
        if (fd_.fd >= 0 && fd_.shadow == current_shadow(vm_)) return {};
        fd_ = TRY(from_vm(vm_.changes().open_for_writing(path_, mode_)));
        return {};
    }

    // Runs `io` on the guest fd; once more in a new shadow if the old one was replaced
    // between revalidate() and the I/O (EBADF of our own).
    template <class Io>
    auto on_fd(Io io) -> decltype(from_vm(io())) {
        TRY(revalidate());
        auto r = io();
        if (!r && !r.error().from_guest() && r.error().code() == EBADF) {
            fd_ = GuestFd{};
            TRY(revalidate());
            r = io();
        }
        return from_vm(std::move(r));
    }

    Vm& vm_;
    std::string path_;
    GuestFd fd_;
    WriteMode mode_;
};

WriteMode write_mode(int host_flags) {
    WriteMode m;
    m.read_too = (host_flags & O_ACCMODE) == O_RDWR;
    m.append = (host_flags & O_APPEND) != 0;
    m.truncate = (host_flags & O_TRUNC) != 0;
    m.exclusive = (host_flags & O_EXCL) != 0;
    return m;
}

std::string octal_mode(mode_t mode) {
    return strformat("%04o", static_cast<unsigned>(mode & 07777));
}

class GuestNode final : public Node {
  public:
    GuestNode(Vm& vm, GuestTree tree, std::string path, std::optional<GuestStat> attr)
        : vm_(vm),
          tree_(tree),
          path_(std::move(path)),
          attr_(std::move(attr)),
          fetched_(Clock::now()) {}

    Vm* vm() const override { return &vm_; }
    std::string key() const override { return key_of(path_); }
    std::string child_key(const std::string& name) const override {
        return key_of(join(path_, name));
    }
    std::shared_ptr<Node> moved_to(const std::string& from, const std::string& to) const override {
        auto path = moved_path(key(), key_of(""), from, to);
        if (!path) return nullptr;
        std::lock_guard lock(attr_mutex_);
        return std::make_shared<GuestNode>(vm_, tree_, *path, attr_);
    }
    double entry_timeout() const override {
        return tree_ == GuestTree::kRoot ? vm_.cache().root_entry : vm_.cache().proc_entry;
    }

    ErrorOr<NodeAttr> getattr() override {
        double ttl = attr_ttl();
        {
            std::lock_guard lock(attr_mutex_);
            if (attr_ && elapsed_ms(fetched_) <= ttl * 1000) return NodeAttr{to_stat(*attr_), ttl};
        }
        auto fresh = TRY(from_vm(vm_.files().stat(path_)));  // no lock across a guest call
        std::lock_guard lock(attr_mutex_);
        attr_ = fresh;
        fetched_ = Clock::now();
        return NodeAttr{to_stat(fresh), ttl};
    }

    std::optional<NodeAttr> known_attr() override {
        std::lock_guard lock(attr_mutex_);
        if (!attr_) return std::nullopt;
        return NodeAttr{to_stat(*attr_), attr_ttl()};
    }

    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        // Names from the kernel are single components already; these come from nowhere else.
        if (!is_safe_name(name)) return make_error(ENOENT, "bad name");
        std::string child = join(path_, name);
        auto st = TRY(from_vm(vm_.files().stat(child)));
        return std::shared_ptr<Node>(std::make_shared<GuestNode>(vm_, tree_, child, st));
    }

    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller& who) override {
        TRY(vm_.gate().check_read(vm_.scope(), who, path_));
        std::vector<DirEntry> out;
        out.push_back(DirEntry{".", S_IFDIR, nullptr});
        out.push_back(DirEntry{"..", S_IFDIR, nullptr});
        if (plus) {
            auto entries = TRY(from_vm(vm_.files().list_dir_with_stats(path_)));
            for (auto& e : entries) {
                if (e.entry.name == "." || e.entry.name == "..") continue;
                DirEntry d{e.entry.name, static_cast<mode_t>(DTTOIF(e.entry.type)), nullptr};
                if (e.stat) {
                    d.type = e.stat->mode & S_IFMT;
                    d.node =
                        std::make_shared<GuestNode>(vm_, tree_, join(path_, e.entry.name), *e.stat);
                }
                out.push_back(std::move(d));
            }
        } else {
            auto entries = TRY(from_vm(vm_.files().list_dir(path_)));
            for (auto& e : entries) {
                if (e.name == "." || e.name == "..") continue;
                out.push_back(DirEntry{e.name, static_cast<mode_t>(DTTOIF(e.type)), nullptr});
            }
        }
        return out;
    }

    ErrorOr<std::unique_ptr<FileHandle>> open(int flags, const Caller& who) override {
        if ((flags & O_ACCMODE) != O_WRONLY) {
            TRY(vm_.gate().check_read(vm_.scope(), who, path_));
            if (consumes_on_read(path_) && !vm_.allow_consuming_reads()) {
                return make_error(EACCES, "reading " + path_ +
                                              " would take its data from the guest "
                                              "(allow_consuming_reads: true allows it)");
            }
        }
        if ((flags & O_ACCMODE) != O_RDONLY) return open_for_writing(flags, who);
        auto opened = TRY(
            from_vm(vm_.files().open_and_read(path_, GuestFileOps::kOpenForReading, kReadAhead)));
        return std::unique_ptr<FileHandle>(
            std::make_unique<GuestFileHandle>(vm_, path_, std::move(opened)));
    }

    ErrorOr<std::string> readlink() override {
        auto target = TRY(from_vm(vm_.files().readlink(path_)));
        return contain_link_target(tree_path(tree_), path_, target);
    }

    ErrorOr<NodeAttr> setattr(const AttrChange& change, const Caller& who) override {
        // `echo v > file` truncates first. proc and sys files cannot be truncated and their
        // writes replace the value anyway (sysfs does the same): the truncate is a no-op.
        bool only_truncate = change.size && *change.size == 0 && !change.mode && !change.uid &&
                             !change.gid && !change.atime && !change.mtime;
        if (only_truncate && tree_ != GuestTree::kRoot) return getattr();
        TRY(refuse_shadow_paths(vm_, path_));
        if (change.size) TRY(truncate(*change.size, who));
        if (change.mode) TRY(chmod(*change.mode, who));
        if (change.uid || change.gid) TRY(chown(change.uid, change.gid, who));
        if (change.atime || change.mtime) TRY(set_times(change, who));
        forget_attr();
        return getattr();
    }

    ErrorOr<std::shared_ptr<Node>> mkdir(const std::string& name, mode_t mode,
                                         const Caller& who) override {
        std::string child = TRY(child_path(name));
        auto st = TRY(change(who, {.op = policy::Operation::kMkdir, .path = child},
                             [&] { return vm_.changes().mkdir(child, mode); }));
        return std::shared_ptr<Node>(std::make_shared<GuestNode>(vm_, tree_, child, st));
    }

    ErrorOr<void> unlink(const std::string& name, const Caller& who) override {
        std::string child = TRY(child_path(name));
        return change(who, {.op = policy::Operation::kUnlink, .path = child},
                      [&] { return vm_.changes().unlink(child); });
    }

    ErrorOr<void> rmdir(const std::string& name, const Caller& who) override {
        std::string child = TRY(child_path(name));
        return change(who, {.op = policy::Operation::kRmdir, .path = child},
                      [&] { return vm_.changes().rmdir(child); });
    }

    ErrorOr<void> rename(const std::string& name, Node& new_parent, const std::string& new_name,
                         unsigned flags, const Caller& who) override;

    ErrorOr<std::shared_ptr<Node>> symlink(const std::string& target, const std::string& name,
                                           const Caller& who) override {
        std::string child = TRY(child_path(name));
        auto st =
            TRY(change(who, {.op = policy::Operation::kSymlink, .path = child, .value = target},
                       [&] { return vm_.changes().symlink(target, child); }));
        return std::shared_ptr<Node>(std::make_shared<GuestNode>(vm_, tree_, child, st));
    }

    ErrorOr<std::shared_ptr<Node>> create(const std::string& name, mode_t mode, int flags,
                                          std::unique_ptr<FileHandle>& handle,
                                          const Caller& who) override {
        std::string child = TRY(child_path(name));
        WriteMode how = write_mode(flags);
        if ((flags & O_ACCMODE) == O_RDONLY) how.read_too = true;  // creat() then read: rare
        auto made = TRY(change(who, {.op = policy::Operation::kCreate, .path = child},
                               [&] { return vm_.changes().create(child, how, mode); }));
        handle = std::make_unique<GuestWriteHandle>(vm_, child, made.fd, how);
        return std::shared_ptr<Node>(std::make_shared<GuestNode>(vm_, tree_, child, made.stat));
    }

    ErrorOr<void> setxattr(const std::string& name, std::span<const uint8_t> value, int flags,
                           const Caller& who) override {
        TRY(refuse_shadow_paths(vm_, path_));
        std::vector<uint8_t> bytes(value.begin(), value.end());
        return change(
            who, {.op = policy::Operation::kSetxattr, .path = path_, .value = name, .data = value},
            [&] { return vm_.changes().setxattr(path_, name, bytes, flags); });
    }

    const std::string& path() const { return path_; }
    GuestTree tree() const { return tree_; }

  private:
    std::string key_of(const std::string& path) const {
        return "g:" + vm_.key() + ":" + tree_name(tree_) + ":" + path;
    }

    // Decides, audits and runs one change of this VM (fs/change_gate.h).
    template <class Act>
    auto change(const Caller& who, const ChangeAsk& ask, Act&& act) -> decltype(act()) {
        // The outcome on record is what the caller sees.
        return vm_.gate().apply(vm_.scope(), who, ask, [&] { return from_vm(act()); });
    }

    // The guest path of a new or removed entry of this directory.
    ErrorOr<std::string> child_path(const std::string& name) const {
        if (!is_safe_name(name) || name == "." || name == "..")
            return make_error(EINVAL, "bad name");
        std::string child = join(path_, name);
        TRY(refuse_shadow_paths(vm_, child));
        return child;
    }

    ErrorOr<std::unique_ptr<FileHandle>> open_for_writing(int flags, const Caller& who) {
        TRY(refuse_shadow_paths(vm_, path_));
        TRY(vm_.gate().check_writable(vm_.scope(), who, path_));
        WriteMode how = write_mode(flags);
        // An O_TRUNC that reaches us (no atomic_o_trunc: the kernel usually sends a
        // setattr instead) is a truncate of its own.
        if (how.truncate && tree_ == GuestTree::kRoot) {
            TRY(truncate(0, who));
        }
        how.truncate = false;
        auto fd = TRY(from_vm(vm_.changes().open_for_writing(path_, how)));
        return std::unique_ptr<FileHandle>(std::make_unique<GuestWriteHandle>(vm_, path_, fd, how));
    }

    ErrorOr<void> truncate(off_t size, const Caller& who) {
        if (size < 0) return make_error(EINVAL, "negative size");
        return change(who,
                      {.op = policy::Operation::kTruncate,
                       .path = path_,
                       .size = static_cast<uint64_t>(size)},
                      [&] { return vm_.changes().truncate(path_, static_cast<uint64_t>(size)); });
    }

    ErrorOr<void> chmod(mode_t mode, const Caller& who) {
        {
            // fchmod needs the file open: devices, FIFOs and sockets are not opened for it.
            std::lock_guard lock(attr_mutex_);
            if (attr_ && !S_ISREG(attr_->mode) && !S_ISDIR(attr_->mode))
                return make_error(EOPNOTSUPP, "chmod of a special file through the mount");
        }
        return change(who,
                      {.op = policy::Operation::kChmod, .path = path_, .value = octal_mode(mode)},
                      [&] { return vm_.changes().chmod(path_, mode); });
    }

    ErrorOr<void> chown(std::optional<uid_t> uid, std::optional<gid_t> gid, const Caller& who) {
        auto id = [](auto v) { return v ? std::to_string(*v) : std::string("-1"); };
        return change(
            who, {.op = policy::Operation::kChown, .path = path_, .value = id(uid) + ":" + id(gid)},
            [&] { return vm_.changes().chown(path_, uid, gid); });
    }

    // Times are part of a file's content as far as the policy goes: a `write`.
    ErrorOr<void> set_times(const AttrChange& c, const Caller& who) {
        auto time = [](const std::optional<AttrChange::Time>& t) {
            if (!t) return GuestTime::omit();
            if (t->now) return GuestTime::now();
            return GuestTime{t->value.tv_sec, t->value.tv_nsec};
        };
        return change(who, {.op = policy::Operation::kWrite, .path = path_},
                      [&] { return vm_.changes().set_times(path_, time(c.atime), time(c.mtime)); });
    }

    void forget_attr() {
        std::lock_guard lock(attr_mutex_);
        attr_.reset();
    }

    double attr_ttl() const {
        return tree_ == GuestTree::kRoot ? vm_.cache().root_attr : vm_.cache().proc_attr;
    }

    Vm& vm_;
    GuestTree tree_;
    std::string path_;
    // A node is shared (inode table, listings): the VM's worker refreshes these while the
    // FUSE thread may read them for readdirplus. A leaf lock.
    mutable std::mutex attr_mutex_;
    std::optional<GuestStat> attr_;
    Clock::time_point fetched_;
};

// proc/, sys/ and root/ themselves: answered locally (a VM that is down still lists its
// directory), everything below goes to the guest.
class TreeRoot final : public Node {
  public:
    TreeRoot(Vm& vm, GuestTree tree)
        : vm_(vm),
          tree_(tree),
          inner_(std::make_shared<GuestNode>(vm, tree, tree_path(tree), std::nullopt)) {}

    Vm* vm() const override { return &vm_; }
    std::string key() const override {
        return std::string("t:") + vm_.key() + ":" + tree_name(tree_);
    }
    bool local_getattr() const override { return true; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        return inner_->lookup(name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus, const Caller& who) override {
        return inner_->readdir(plus, who);
    }
    std::string child_key(const std::string& name) const override {
        return inner_->child_key(name);
    }
    // Changes of the entries of the tree's top directory.
    ErrorOr<std::shared_ptr<Node>> mkdir(const std::string& name, mode_t mode,
                                         const Caller& who) override {
        return inner_->mkdir(name, mode, who);
    }
    ErrorOr<void> unlink(const std::string& name, const Caller& who) override {
        return inner_->unlink(name, who);
    }
    ErrorOr<void> rmdir(const std::string& name, const Caller& who) override {
        return inner_->rmdir(name, who);
    }
    ErrorOr<void> rename(const std::string& name, Node& new_parent, const std::string& new_name,
                         unsigned flags, const Caller& who) override {
        return inner_->rename(name, new_parent, new_name, flags, who);
    }
    ErrorOr<std::shared_ptr<Node>> symlink(const std::string& target, const std::string& name,
                                           const Caller& who) override {
        return inner_->symlink(target, name, who);
    }
    ErrorOr<std::shared_ptr<Node>> create(const std::string& name, mode_t mode, int flags,
                                          std::unique_ptr<FileHandle>& handle,
                                          const Caller& who) override {
        return inner_->create(name, mode, flags, handle, who);
    }

    GuestNode& inner() const { return *inner_; }

  private:
    Vm& vm_;
    GuestTree tree_;
    std::shared_ptr<GuestNode> inner_;
};

// The guest directory a node of the mount stands for, if it is one.
const GuestNode* guest_dir_of(Node& node) {
    if (auto* g = dynamic_cast<GuestNode*>(&node)) return g;
    if (auto* t = dynamic_cast<TreeRoot*>(&node)) return &t->inner();
    return nullptr;
}

ErrorOr<void> GuestNode::rename(const std::string& name, Node& new_parent,
                                const std::string& new_name, unsigned flags, const Caller& who) {
    const GuestNode* target_dir = guest_dir_of(new_parent);
    // Across VMs or trees (root/ to proc/) there is no rename, as across file systems.
    if (!target_dir || target_dir->vm() != vm() || target_dir->tree() != tree_)
        return make_error(EXDEV, "rename across VMs or guest trees");
    if (flags & ~static_cast<unsigned>(RENAME_NOREPLACE | RENAME_EXCHANGE))
        return make_error(EINVAL, "unsupported rename flags");
    std::string from = TRY(child_path(name));
    if (!is_safe_name(new_name) || new_name == "." || new_name == "..")
        return make_error(EINVAL, "bad name");
    std::string to = join(target_dir->path(), new_name);
    TRY(refuse_shadow_paths(vm_, to));
    RenameMode mode{(flags & RENAME_NOREPLACE) != 0, (flags & RENAME_EXCHANGE) != 0};
    return change(who, {.op = policy::Operation::kRename, .path = from, .to = to},
                  [&] { return vm_.changes().rename(from, to, mode); });
}

}  // namespace

std::shared_ptr<Node> make_guest_tree_root(Vm& vm, GuestTree tree) {
    return std::make_shared<TreeRoot>(vm, tree);
}

}  // namespace cloudvmi::fs
