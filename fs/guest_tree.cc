// proc/, sys/ and root/ of a VM: the guest's own file namespace, mirrored generically
// (every path the guest has, not a hand-picked list). Every operation here runs on the
// VM's queue and becomes one or a few batches of guest syscalls.
#include <dirent.h>
#include <fcntl.h>

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

// The guest's errno passes unchanged; failures of our own say what the caller can do about
// them: the VM cannot be reached (ENOTCONN) or did not answer in time (EIO).
Error vm_error(const Error& e) {
    if (e.from_guest()) return e;
    switch (e.code()) {
        case ENOENT:  // no gdbstub socket: the VM is not running
        case ECONNREFUSED:
        case ECONNRESET:
        case ENOTCONN:
        case EPIPE:
        case EPROTO:
        case EHOSTUNREACH:
        case ENETUNREACH:
        case ECONNABORTED:
            return Error(ENOTCONN, e.message());
        case EBUSY:   // another cloudvmi serves the VM
        case EAGAIN:  // its owner paused the VM: try again once it runs
        case EACCES:
        case EINTR:
        case ENAMETOOLONG:
        case E2BIG:  // a directory beyond the entry cap
        case EFBIG:  // a file beyond the size cap
            return e;
        default:
            return Error(EIO, e.message());
    }
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

class GuestNode final : public Node {
  public:
    GuestNode(Vm& vm, GuestTree tree, std::string path, std::optional<GuestStat> attr)
        : vm_(vm),
          tree_(tree),
          path_(std::move(path)),
          attr_(std::move(attr)),
          fetched_(Clock::now()) {}

    Vm* vm() const override { return &vm_; }
    std::string key() const override {
        return "g:" + vm_.name() + ":" + tree_name(tree_) + ":" + path_;
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

    ErrorOr<std::vector<DirEntry>> readdir(bool plus) override {
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

    ErrorOr<std::unique_ptr<FileHandle>> open(int flags) override {
        if ((flags & O_ACCMODE) != O_RDONLY) {
            // Writes go through the write policy; none is configured, so none is allowed,
            // and nothing reaches the guest.
            return make_error(EACCES, "writing " + path_ + " is not allowed by the policy");
        }
        if (consumes_on_read(path_) && !vm_.allow_consuming_reads()) {
            return make_error(EACCES, "reading " + path_ +
                                          " would take its data from the guest "
                                          "(allow_consuming_reads: true allows it)");
        }
        auto opened = TRY(
            from_vm(vm_.files().open_and_read(path_, GuestFileOps::kOpenForReading, kReadAhead)));
        return std::unique_ptr<FileHandle>(
            std::make_unique<GuestFileHandle>(vm_, path_, std::move(opened)));
    }

    ErrorOr<std::string> readlink() override {
        auto target = TRY(from_vm(vm_.files().readlink(path_)));
        return contain_link_target(tree_path(tree_), path_, target);
    }

    ErrorOr<NodeAttr> setattr(const AttrChange& change) override {
        // `echo v > file` truncates first. proc and sys files cannot be truncated and their
        // writes replace the value anyway (sysfs does the same): the truncate is a no-op.
        bool only_truncate = change.size && *change.size == 0 && !change.mode && !change.uid &&
                             !change.gid && !change.times;
        if (only_truncate && tree_ != GuestTree::kRoot) return getattr();
        return make_error(EACCES, "changing " + path_ + " is not allowed by the policy");
    }

  private:
    double attr_ttl() const {
        return tree_ == GuestTree::kRoot ? vm_.cache().root_attr : vm_.cache().proc_attr;
    }

    Vm& vm_;
    GuestTree tree_;
    std::string path_;
    // A node is shared (inode table, listings): the VM's worker refreshes these while the
    // FUSE thread may read them for readdirplus. A leaf lock.
    std::mutex attr_mutex_;
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
        return std::string("t:") + vm_.name() + ":" + tree_name(tree_);
    }
    bool local_getattr() const override { return true; }
    ErrorOr<NodeAttr> getattr() override { return NodeAttr{synthetic_stat(S_IFDIR | 0555), 1}; }
    ErrorOr<std::shared_ptr<Node>> lookup(const std::string& name) override {
        return inner_->lookup(name);
    }
    ErrorOr<std::vector<DirEntry>> readdir(bool plus) override { return inner_->readdir(plus); }

  private:
    Vm& vm_;
    GuestTree tree_;
    std::shared_ptr<GuestNode> inner_;
};

}  // namespace

std::shared_ptr<Node> make_guest_tree_root(Vm& vm, GuestTree tree) {
    return std::make_shared<TreeRoot>(vm, tree);
}

}  // namespace cloudvmi::fs
