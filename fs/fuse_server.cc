// The FUSE boundary: the only file that sees libfuse. Requests become Node calls, results
// become replies, and an Error becomes its errno here and nowhere else.
//
// Requests that touch a guest go to that VM's queue (fs/vm_executor.h) and are answered
// from its worker: a slow VM delays only its own requests. Everything else (the inventory
// directories, .cloudvmi/status) is answered on the FUSE thread at once.
//
// Lock order: no lock is held across a call into a node. The inode table, the per-VM
// queues and the directory handles each have a leaf mutex of their own.
#define FUSE_USE_VERSION 314
#include "fs/fuse_server.h"

#include <fuse_lowlevel.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "common/log.h"
#include "common/paths.h"
#include "common/strings.h"
#include "fs/filesystem.h"
#include "fs/fuse_errno.h"
#include "fs/mount_watch.h"
#include "redirector/session/guest_session.h"

namespace cloudvmi::fs {

namespace {

constexpr fuse_ino_t kUnknownIno = 0xffffffff;

// The session's userdata: the filesystem is created after daemonizing (it starts threads),
// but libfuse wants its userdata when the session is created. Requests are only read by
// the loop, which starts once `fs` is set.
struct Holder {
    Filesystem* fs = nullptr;
};

Filesystem& fs_of(fuse_req_t req) {
    return *static_cast<Holder*>(fuse_req_userdata(req))->fs;
}

// An open directory: entries are fetched once, at the first read at offset 0.
struct DirHandle {
    std::shared_ptr<Node> node;
    std::mutex mutex;  // guards entries/loaded; a leaf lock
    std::vector<DirEntry> entries;
    bool loaded = false;
};

struct OpenFile {
    OpenFile(std::shared_ptr<Node> n, std::unique_ptr<FileHandle> h)
        : node(std::move(n)), handle(std::move(h)) {}
    OpenFile(const OpenFile&) = delete;
    OpenFile& operator=(const OpenFile&) = delete;
    // Whoever drops the last reference releases the handle (its guest fd is closed with the
    // VM's next batch): a RELEASE that never ran leaks nothing.
    ~OpenFile() { handle->release(); }

    std::shared_ptr<Node> node;
    std::unique_ptr<FileHandle> handle;
};

// fi->fh holds a box with the kernel's reference to an open handle, dropped at RELEASE.
// Every request working on the handle holds a reference of its own, so a release (run,
// or dropped from a queue) never frees what a request interrupted earlier still uses.
template <class T>
uint64_t boxed(std::shared_ptr<T> handle) {
    return reinterpret_cast<uint64_t>(new std::shared_ptr<T>(std::move(handle)));
}
template <class T>
std::shared_ptr<T> in_box(const fuse_file_info* fi) {
    return *reinterpret_cast<std::shared_ptr<T>*>(fi->fh);
}
template <class T>
std::shared_ptr<T> unboxed(const fuse_file_info* fi) {
    auto* box = reinterpret_cast<std::shared_ptr<T>*>(fi->fh);
    std::shared_ptr<T> handle = std::move(*box);
    delete box;
    return handle;
}
std::shared_ptr<OpenFile> open_file(const fuse_file_info* fi) {
    return in_box<OpenFile>(fi);
}
std::shared_ptr<DirHandle> dir_handle(const fuse_file_info* fi) {
    return in_box<DirHandle>(fi);
}

// Sends a reply unless the request was answered already (see Job::answer); returns
// whether it did. Inline requests always send.
using Answer = std::function<bool(const std::function<void()>&)>;

// A request's work: it sends its reply through the Answer and returns the error it
// answered with, if any (for the VM's statistics).
using Work = std::function<std::optional<Error>(const Answer&)>;

// For requests answered on the FUSE thread: nothing can have answered them before.
const Answer kAnswerNow = [](const std::function<void()>& send) {
    send();
    return true;
};

std::optional<Error> reply_error(const Answer& answer, fuse_req_t req, const Error& e) {
    // The guest's own answers (ENOENT...) are the caller's business; ours (a refusal, an
    // unreachable VM) say why in the log, where the caller's errno cannot.
    if (e.from_guest()) {
        LOG_DEBUG("request answered %d: %s", fuse_errno(e), e.describe().c_str());
    } else {
        LOG_INFO("request refused (%s): %s", std::strerror(fuse_errno(e)), e.describe().c_str());
    }
    answer([&] { fuse_reply_err(req, fuse_errno(e)); });
    return e;
}

// Where `node`'s requests run: its own queue (a remote node's), its VM's, or none.
VmExecutor* queue_of(const Node* node) {
    if (node == nullptr) return nullptr;
    if (VmExecutor* own = node->queue()) return own;
    return node->vm() ? &node->vm()->executor() : nullptr;
}

// Runs `work` on the queue `node`'s requests go to (see queue_of), inline for nodes answered
// locally and for a null `node`. `on_drop` frees what a request that never runs would have
// freed.
void dispatch(fuse_req_t req, const Node* node, Work work,
              std::function<void()> on_drop = nullptr) {
    VmExecutor* queue = queue_of(node);
    if (queue == nullptr) {
        (void)work(kAnswerNow);
        return;
    }
    Vm* vm = node->vm();  // null for a remote node: no VM statistics here
    auto deadline = Clock::now() + Millis(fs_of(req).config().request_timeout_ms);
    auto job = std::make_shared<Job>(
        [vm, work](Job& self) {
            Answer answer = [&self](const std::function<void()>& send) {
                return self.answer(send);
            };
            auto start = Clock::now();
            auto err = work(answer);
            if (vm) vm->record(elapsed_ms(start), err ? &*err : nullptr);
        },
        [req, vm, on_drop](int err, bool ran) {
            if (!ran && on_drop) on_drop();
            fuse_reply_err(req, err);
            Error e(err, ran ? "request interrupted" : "request dropped");
            if (!ran && vm) vm->record(0, &e);
        },
        [req]() { return fuse_req_interrupted(req) != 0; }, deadline);
    if (!queue->submit(job)) {
        if (on_drop) on_drop();
        fuse_reply_err(req, EAGAIN);
    }
}

// The caller's credentials; the supplementary groups only when they can matter (the
// operators group, and the policy's group rules, never apply to host root).
Caller caller_of(fuse_req_t req) {
    const fuse_ctx* ctx = fuse_req_ctx(req);
    Caller c{ctx->uid, ctx->gid, {}, ctx->pid};
    if (c.uid != 0) {
        gid_t groups[256];
        int n = fuse_req_getgroups(req, 256, groups);
        if (n > 0) c.groups.assign(groups, groups + std::min(n, 256));
    }
    return c;
}

// The node behind `ino` if the caller may use it (fs/access.h); otherwise replies with
// ESTALE or EACCES and returns null. Every request on a node starts here; `who` is set
// to the caller.
std::shared_ptr<Node> node_or_reply(fuse_req_t req, fuse_ino_t ino, Caller* who = nullptr) {
    Filesystem& fs = fs_of(req);
    auto node = fs.inodes().get(ino);
    if (!node) {
        fuse_reply_err(req, ESTALE);
        return nullptr;
    }
    Caller caller = caller_of(req);
    if (!may_access(fs.access_rule(), caller, node->exposure())) {
        fuse_reply_err(req, EACCES);
        return nullptr;
    }
    if (who) *who = std::move(caller);
    return node;
}

// The entry the kernel is told about; the node is remembered (one lookup) under its inode.
fuse_entry_param remembered_entry(Filesystem& fs, const std::shared_ptr<Node>& node,
                                  const NodeAttr& attr) {
    fuse_entry_param e{};
    e.ino = fs.inodes().remember(node);
    e.generation = 1;
    e.attr = attr.st;
    e.attr.st_ino = e.ino;
    e.attr_timeout = attr.timeout;
    e.entry_timeout = node->entry_timeout();
    return e;
}

// `fs` is taken before the work starts: a request answered early (interrupted) is freed by
// libfuse, and `req` may then only be passed to answer().
std::optional<Error> reply_entry(const Answer& answer, fuse_req_t req, Filesystem& fs,
                                 const std::shared_ptr<Node>& node) {
    auto attr = node->getattr();
    if (!attr) return reply_error(answer, req, attr.error());
    fuse_entry_param e = remembered_entry(fs, node, *attr);
    bool delivered = false;
    answer([&] { delivered = fuse_reply_entry(req, &e) == 0; });
    if (!delivered) fs.inodes().forget(e.ino, 1);  // the kernel never got it
    return std::nullopt;
}

// --- requests ---

void ll_init(void*, fuse_conn_info* conn) {
    if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
    if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
}

void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    auto node = node_or_reply(req, parent);
    if (!node) return;
    std::string n(name);
    Filesystem* fs = &fs_of(req);
    dispatch(req, node.get(), [req, fs, node, n](const Answer& answer) -> std::optional<Error> {
        auto child = node->lookup(n);
        if (!child) return reply_error(answer, req, child.error());
        return reply_entry(answer, req, *fs, *child);
    });
}

void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    fs_of(req).inodes().forget(ino, nlookup);
    fuse_reply_none(req);
}

void ll_forget_multi(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
    for (size_t i = 0; i < count; ++i)
        fs_of(req).inodes().forget(forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

void ll_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
    auto node = node_or_reply(req, ino);
    if (!node) return;
    dispatch(req, node->local_getattr() ? nullptr : node.get(),
             [req, node, ino](const Answer& answer) -> std::optional<Error> {
                 auto attr = node->getattr();
                 if (!attr) return reply_error(answer, req, attr.error());
                 attr->st.st_ino = ino;
                 answer([&] { fuse_reply_attr(req, &attr->st, attr->timeout); });
                 return std::nullopt;
             });
}

AttrChange attr_change(const struct stat* attr, int to_set) {
    AttrChange change;
    if (to_set & FUSE_SET_ATTR_SIZE) change.size = attr->st_size;
    if (to_set & FUSE_SET_ATTR_MODE) change.mode = attr->st_mode;
    if (to_set & FUSE_SET_ATTR_UID) change.uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID) change.gid = attr->st_gid;
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
        change.atime = AttrChange::Time{true, {}};
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
        change.atime = AttrChange::Time{false, attr->st_atim};
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
        change.mtime = AttrChange::Time{true, {}};
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
        change.mtime = AttrChange::Time{false, attr->st_mtim};
    }
    if (to_set & FUSE_SET_ATTR_CTIME) change.other_times = true;
    return change;
}

void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
    Caller who;
    auto node = node_or_reply(req, ino, &who);
    if (!node) return;
    AttrChange change = attr_change(attr, to_set);
    dispatch(req, node.get(),
             [req, node, ino, change, who](const Answer& answer) -> std::optional<Error> {
                 auto r = node->setattr(change, who);
                 if (!r) return reply_error(answer, req, r.error());
                 r->st.st_ino = ino;
                 answer([&] { fuse_reply_attr(req, &r->st, r->timeout); });
                 return std::nullopt;
             });
}

void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
    auto node = node_or_reply(req, ino);
    if (!node) return;
    dispatch(req, node.get(), [req, node](const Answer& answer) -> std::optional<Error> {
        auto target = node->readlink();
        if (!target) return reply_error(answer, req, target.error());
        answer([&] { fuse_reply_readlink(req, target->c_str()); });
        return std::nullopt;
    });
}

void ll_opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    auto node = node_or_reply(req, ino);
    if (!node) return;
    auto dh = std::make_shared<DirHandle>();
    dh->node = node;
    fi->fh = boxed(std::move(dh));
    fi->cache_readdir = 0;
    if (fuse_reply_open(req, fi) != 0) (void)unboxed<DirHandle>(fi);
}

void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
                bool plus) {
    Caller who;
    auto node = node_or_reply(req, ino, &who);
    if (!node) return;
    std::shared_ptr<DirHandle> dh = dir_handle(fi);
    bool need_fetch;
    {
        std::lock_guard lock(dh->mutex);
        need_fetch = !dh->loaded || off == 0;
    }
    Filesystem* mounted = &fs_of(req);  // not from `req` inside: see reply_entry
    auto reply = [req, mounted, dh, size, off, plus](const Answer& answer) -> std::optional<Error> {
        Filesystem& fs = *mounted;
        std::vector<uint64_t> remembered_all;
        std::vector<char> buf(size);
        size_t used = 0;
        std::lock_guard lock(dh->mutex);
        for (size_t i = static_cast<size_t>(off); i < dh->entries.size(); ++i) {
            const DirEntry& e = dh->entries[i];
            off_t next = static_cast<off_t>(i + 1);
            size_t room = size - used;
            size_t n;
            if (plus) {
                fuse_entry_param p{};
                uint64_t remembered = 0;
                if (e.node) {
                    auto attr = e.node->known_attr();  // from the listing: no guest call
                    if (attr) {
                        p = remembered_entry(fs, e.node, *attr);
                        remembered = p.ino;
                    }
                }
                if (!remembered) {
                    p.attr.st_ino = kUnknownIno;
                    p.attr.st_mode = e.type;
                }
                n = fuse_add_direntry_plus(req, buf.data() + used, room, e.name.c_str(), &p, next);
                if (remembered) {
                    if (n > room) {
                        fs.inodes().forget(remembered, 1);  // did not fit: not sent
                    } else {
                        remembered_all.push_back(remembered);
                    }
                }
            } else {
                struct stat st {};
                st.st_ino = kUnknownIno;
                st.st_mode = e.type;
                n = fuse_add_direntry(req, buf.data() + used, room, e.name.c_str(), &st, next);
            }
            if (n > room) break;
            used += n;
        }
        if (!answer([&] { fuse_reply_buf(req, buf.data(), used); })) {
            for (uint64_t ino : remembered_all)
                fs.inodes().forget(ino, 1);
        }
        return std::nullopt;
    };
    if (!need_fetch) {
        (void)reply(kAnswerNow);
        return;
    }
    dispatch(req, node.get(),
             [req, node, dh, plus, reply, who](const Answer& answer) -> std::optional<Error> {
                 auto entries = node->readdir(plus, who);
                 if (!entries) return reply_error(answer, req, entries.error());
                 {
                     std::lock_guard lock(dh->mutex);
                     dh->entries = std::move(*entries);
                     dh->loaded = true;
                 }
                 return reply(answer);
             });
}

void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    do_readdir(req, ino, size, off, fi, false);
}

void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
    do_readdir(req, ino, size, off, fi, true);
}

void ll_releasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    // The entries go with the last request that used them.
    (void)unboxed<DirHandle>(fi);
    fuse_reply_err(req, 0);
}

void ll_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    Caller who;
    auto node = node_or_reply(req, ino, &who);
    if (!node) return;
    int flags = fi->flags;
    dispatch(req, node.get(),
             [req, node, flags, who,
              fi_copy = *fi](const Answer& answer) mutable -> std::optional<Error> {
                 auto handle = node->open(flags, who);
                 if (!handle) return reply_error(answer, req, handle.error());
                 auto of = std::make_shared<OpenFile>(node, std::move(*handle));
                 fi_copy.direct_io = of->handle->direct_io() ? 1 : 0;
                 fi_copy.keep_cache = 0;
                 fi_copy.fh = boxed(std::move(of));
                 bool delivered = false;
                 answer([&] { delivered = fuse_reply_open(req, &fi_copy) == 0; });
                 // The caller is gone (interrupted): nobody will release this handle.
                 if (!delivered) (void)unboxed<OpenFile>(&fi_copy);
                 return std::nullopt;
             });
}

void ll_read(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info* fi) {
    std::shared_ptr<OpenFile> of = open_file(fi);
    if (auto cached = of->handle->read_cached(size, off)) {
        fuse_reply_buf(req, reinterpret_cast<const char*>(cached->data()), cached->size());
        return;
    }
    dispatch(req, of->node.get(),
             [req, of, size, off](const Answer& answer) -> std::optional<Error> {
                 auto data = of->handle->read(size, off);
                 if (!data) return reply_error(answer, req, data.error());
                 answer([&] {
                     fuse_reply_buf(req, reinterpret_cast<const char*>(data->data()), data->size());
                 });
                 return std::nullopt;
             });
}

void ll_write(fuse_req_t req, fuse_ino_t, const char* buf, size_t size, off_t off,
              fuse_file_info* fi) {
    std::shared_ptr<OpenFile> of = open_file(fi);
    std::vector<uint8_t> data(buf, buf + size);
    Caller who = caller_of(req);
    dispatch(
        req, of->node.get(),
        [req, of, data = std::move(data), off, who](const Answer& answer) -> std::optional<Error> {
            auto n = of->handle->write(data, off, who);
            if (!n) return reply_error(answer, req, n.error());
            answer([&] { fuse_reply_write(req, *n); });
            return std::nullopt;
        });
}

void ll_flush(fuse_req_t req, fuse_ino_t, fuse_file_info*) {
    fuse_reply_err(req, 0);
}

void ll_release(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    // The kernel's reference goes now; the handle is released (its guest fd closed with the
    // VM's next batch) by the last request still using it, or here.
    (void)unboxed<OpenFile>(fi);
    fuse_reply_err(req, 0);
}

void ll_statfs(fuse_req_t req, fuse_ino_t) {
    struct statvfs st {};
    st.f_bsize = 4096;
    st.f_frsize = 4096;
    st.f_namemax = 255;
    fuse_reply_statfs(req, &st);
}

// Changes of the namespace: each goes to its node on the VM's queue, where the policy
// decides (fs/change_gate.h).
void reply_new_entry(fuse_req_t req, fuse_ino_t parent, const std::string& what,
                     std::function<ErrorOr<std::shared_ptr<Node>>(Node&, const Caller&)> make) {
    Caller who;
    auto node = node_or_reply(req, parent, &who);
    if (!node) return;
    Filesystem* fs = &fs_of(req);
    dispatch(req, node.get(),
             [req, fs, node, who, make, what](const Answer& answer) -> std::optional<Error> {
                 auto child = make(*node, who);
                 if (!child) return reply_error(answer, req, child.error().with_context(what));
                 return reply_entry(answer, req, *fs, *child);
             });
}

void reply_done(fuse_req_t req, fuse_ino_t parent,
                std::function<ErrorOr<void>(Node&, const Caller&)> act) {
    Caller who;
    auto node = node_or_reply(req, parent, &who);
    if (!node) return;
    dispatch(req, node.get(), [req, node, who, act](const Answer& answer) -> std::optional<Error> {
        auto r = act(*node, who);
        if (!r) return reply_error(answer, req, r.error());
        answer([&] { fuse_reply_err(req, 0); });
        return std::nullopt;
    });
}

void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    std::string n(name);
    reply_new_entry(req, parent, "mkdir",
                    [n, mode](Node& dir, const Caller& who) { return dir.mkdir(n, mode, who); });
}

void ll_symlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
    std::string t(target), n(name);
    reply_new_entry(req, parent, "symlink",
                    [t, n](Node& dir, const Caller& who) { return dir.symlink(t, n, who); });
}

// A removed name no longer names its inode: a new file of that name gets a new one.
void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
    std::string n(name);
    Filesystem* fs = &fs_of(req);
    reply_done(req, parent, [n, fs](Node& dir, const Caller& who) -> ErrorOr<void> {
        TRY(dir.unlink(n, who));
        fs->inodes().drop_key(dir.child_key(n));
        return {};
    });
}

void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
    std::string n(name);
    Filesystem* fs = &fs_of(req);
    reply_done(req, parent, [n, fs](Node& dir, const Caller& who) -> ErrorOr<void> {
        TRY(dir.rmdir(n, who));
        fs->inodes().drop_key(dir.child_key(n));
        return {};
    });
}

void ll_rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent,
               const char* new_name, unsigned flags) {
    auto target = fs_of(req).inodes().get(new_parent);
    if (!target) {
        fuse_reply_err(req, ESTALE);
        return;
    }
    std::string n(name), nn(new_name);
    Filesystem* fs = &fs_of(req);
    reply_done(req, parent,
               [n, nn, target, flags, fs](Node& dir, const Caller& who) -> ErrorOr<void> {
                   TRY(dir.rename(n, *target, nn, flags, who));
                   // The kernel keeps the inodes it knows: they must name the guest's new paths.
                   std::string from = dir.child_key(n), to = target->child_key(nn);
                   if (flags & RENAME_EXCHANGE) {
                       // Not below `from`: an exchange of a directory with its own descendant
                       // fails.
                       const std::string parked = to + "\x01";
                       fs->inodes().rehome(to, parked);
                       fs->inodes().rehome(from, to);
                       fs->inodes().rehome(parked, from);
                   } else {
                       fs->inodes().rehome(from, to);
                   }
                   return {};
               });
}

void ll_create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
               fuse_file_info* fi) {
    Caller who;
    auto node = node_or_reply(req, parent, &who);
    if (!node) return;
    std::string n(name);
    Filesystem* fs = &fs_of(req);
    dispatch(req, node.get(),
             [req, fs, node, n, mode, who,
              fi_copy = *fi](const Answer& answer) mutable -> std::optional<Error> {
                 std::unique_ptr<FileHandle> handle;
                 auto child = node->create(n, mode, fi_copy.flags, handle, who);
                 if (!child) return reply_error(answer, req, child.error());
                 auto attr = (*child)->getattr();
                 if (!attr) {
                     handle->release();  // the guest fd is closed with the next batch
                     return reply_error(answer, req, attr.error());
                 }
                 fuse_entry_param e = remembered_entry(*fs, *child, *attr);
                 auto of = std::make_shared<OpenFile>(*child, std::move(handle));
                 fi_copy.direct_io = 1;
                 fi_copy.keep_cache = 0;
                 fi_copy.fh = boxed(std::move(of));
                 bool delivered = false;
                 answer([&] { delivered = fuse_reply_create(req, &e, &fi_copy) == 0; });
                 if (!delivered) {
                     fs->inodes().forget(e.ino, 1);
                     (void)unboxed<OpenFile>(&fi_copy);
                 }
                 return std::nullopt;
             });
}

// Device nodes and FIFOs are not made through the mount (it is nodev anyway).
void ll_mknod(fuse_req_t req, fuse_ino_t, const char*, mode_t, dev_t) {
    fuse_reply_err(req, EPERM);
}
// Hard links are not made through the mount.
void ll_link(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
    fuse_reply_err(req, EPERM);
}

void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                 int flags) {
    std::string n(name);
    std::vector<uint8_t> v(value, value + size);
    reply_done(req, ino, [n, v, flags](Node& node, const Caller& who) {
        return node.setxattr(n, v, flags, who);
    });
}
void ll_removexattr(fuse_req_t req, fuse_ino_t, const char*) {
    fuse_reply_err(req, EACCES);
}
// Extended attributes are not mirrored: ENOSYS makes the kernel stop asking.
void ll_getxattr(fuse_req_t req, fuse_ino_t, const char*, size_t) {
    fuse_reply_err(req, ENOSYS);
}
void ll_listxattr(fuse_req_t req, fuse_ino_t, size_t) {
    fuse_reply_err(req, ENOSYS);
}

fuse_lowlevel_ops make_ops() {
    fuse_lowlevel_ops ops{};
    ops.init = ll_init;
    ops.lookup = ll_lookup;
    ops.forget = ll_forget;
    ops.forget_multi = ll_forget_multi;
    ops.getattr = ll_getattr;
    ops.setattr = ll_setattr;
    ops.readlink = ll_readlink;
    ops.opendir = ll_opendir;
    ops.readdir = ll_readdir;
    ops.readdirplus = ll_readdirplus;
    ops.releasedir = ll_releasedir;
    ops.open = ll_open;
    ops.read = ll_read;
    ops.write = ll_write;
    ops.flush = ll_flush;
    ops.release = ll_release;
    ops.statfs = ll_statfs;
    ops.mknod = ll_mknod;
    ops.mkdir = ll_mkdir;
    ops.unlink = ll_unlink;
    ops.rmdir = ll_rmdir;
    ops.symlink = ll_symlink;
    ops.rename = ll_rename;
    ops.link = ll_link;
    ops.create = ll_create;
    ops.setxattr = ll_setxattr;
    ops.removexattr = ll_removexattr;
    ops.getxattr = ll_getxattr;
    ops.listxattr = ll_listxattr;
    return ops;
}

}  // namespace

void print_fuse_help() {
    fuse_cmdline_help();
    fuse_lowlevel_help();
}

void print_fuse_version() {
    fuse_lowlevel_version();
}

// How long a mount waits for each libvirt node's first listing before it serves, so that
// its first `ls` shows the domains.
constexpr Millis kFirstListingWait{5000};

// VMs that came or went on a node: the kernel forgets the node directory's listing and
// the entries of those names (called from a node's thread, outside any request).
CloudNode::Changed kernel_forgets_vms(fuse_session* se, Filesystem& fs) {
    return [se, &fs](const std::string& node, const VmSet::Change& change) {
        auto dir = fs.inodes().find_key("n:" + node);
        if (!dir) return;  // never looked at: nothing cached
        for (const auto* names : {&change.added, &change.removed}) {
            for (const auto& name : *names)
                (void)fuse_lowlevel_notify_inval_entry(se, *dir, name.c_str(), name.size());
        }
        (void)fuse_lowlevel_notify_inval_inode(se, *dir, 0, 0);
    };
}

// The mount is gone from our namespace while a copy elsewhere keeps the connection (see
// fs/mount_watch.h): the loop is told to end; the caller then wakes its thread from its
// wait with SIGUSR2, whose handler does nothing (the loop then cancels its workers).
void end_loop_after_unmount(fuse_session* se, const std::string& mnt) {
    LOG_WARN(
        "%s was unmounted here, but another mount namespace still holds a copy of the mount "
        "(a QEMU started while it was mounted, on a host whose / is not a shared mount); "
        "ending anyway",
        mnt.c_str());
    struct sigaction sa {};
    sa.sa_handler = [](int) {};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR2, &sa, nullptr);
    fuse_session_exit(se);
}

// Set by SIGHUP; the reaper thread reloads the policy (no work in a signal handler).
std::atomic<bool> g_reload_requested{false};

void on_sighup(int) {
    g_reload_requested = true;
}

// libfuse ends the loop on SIGHUP; here it reloads the policy instead.
void take_over_sighup() {
    struct sigaction sa {};
    sa.sa_handler = on_sighup;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    ::sigaction(SIGHUP, &sa, nullptr);
}

int serve_mount(const Config& config, const MountSettings& settings,
                const std::vector<std::string>& fuse_command_line, Governance governance) {
    std::vector<std::string> arg_copies = fuse_command_line;
    // Whatever the caller asked: a guest's setuid files and device nodes mean nothing here.
    arg_copies.insert(arg_copies.begin() + (arg_copies.empty() ? 0 : 1), {"-o", "nosuid,nodev"});
    std::vector<char*> argv;
    for (auto& a : arg_copies)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    fuse_args args = FUSE_ARGS_INIT(static_cast<int>(arg_copies.size()), argv.data());
    fuse_cmdline_opts opts{};
    if (fuse_parse_cmdline(&args, &opts) != 0) {
        fuse_opt_free_args(&args);
        return 2;
    }
    auto cleanup = [&]() {
        free(opts.mountpoint);
        fuse_opt_free_args(&args);
    };
    if (opts.mountpoint == nullptr) {
        std::fprintf(stderr, "cloudvmi: expected a mount point (see --help)\n");
        cleanup();
        return 2;
    }
    std::string mountpoint = opts.mountpoint;
    if (opts.debug && log::level() < log::Level::kDebug) log::set_level(log::Level::kDebug);

    fuse_lowlevel_ops ops = make_ops();
    Holder holder;
    std::unique_ptr<Filesystem> fs;
    fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &holder);
    if (se == nullptr) {
        cleanup();
        return 2;
    }
    int rc = 1;
    std::string resolved = resolve_mountpoint(mountpoint);
    if (fuse_set_signal_handlers(se) == 0) {
        take_over_sighup();
        if (fuse_session_mount(se, mountpoint.c_str()) == 0) {
            MountWatch watch(resolved);
            // In the background stderr becomes /dev/null: the log goes to the state directory.
            if (!opts.foreground) {
                std::string log_path = config.state_dir + "/cloudvmi.log";
                if (auto made = ensure_private_dir(config.state_dir);
                    !made || !log::set_output_file(log_path)) {
                    std::fprintf(stderr, "cloudvmi: cannot write the log %s; logging to nowhere\n",
                                 log_path.c_str());
                }
            }
            if (fuse_daemonize(opts.foreground) == 0) {
                LOG_INFO("mounted %s (%zu VMs listed on node %s, %zu libvirt nodes)",
                         mountpoint.c_str(), config.vms.size(), config.node.c_str(),
                         config.nodes.size());
                fs = std::make_unique<Filesystem>(
                    config, Filesystem::session_options(config, settings.guardian_program));
                fs->set_governance(std::move(governance));
                holder.fs = fs.get();
                fs->start_nodes(kernel_forgets_vms(se, *fs), kFirstListingWait);
                std::atomic<bool> stop{false};
                pthread_t loop_thread = pthread_self();
                std::thread reaper([&] {
                    bool ending = false;
                    for (unsigned tick = 1; !stop; ++tick) {
                        if (g_reload_requested.exchange(false)) fs->policies().reload();
                        fs->reap_queues();
                        if (!ending && tick % 10 == 0 && watch.gone()) {
                            end_loop_after_unmount(se, mountpoint);
                            ending = true;
                        }
                        // Again and again: a wake-up that lands just before the loop
                        // thread waits is lost.
                        if (ending) pthread_kill(loop_thread, SIGUSR2);
                        std::this_thread::sleep_for(Millis(100));
                    }
                });
                fuse_loop_config* loop = fuse_loop_cfg_create();
                fuse_loop_cfg_set_clone_fd(loop, opts.clone_fd);
                fuse_loop_cfg_set_max_threads(loop, opts.max_threads ? opts.max_threads : 16);
                rc = opts.singlethread ? fuse_session_loop(se) : fuse_session_loop_mt(se, loop);
                fuse_loop_cfg_destroy(loop);
                LOG_INFO("unmounting %s", mountpoint.c_str());
                stop = true;
                reaper.join();  // before the VMs end: it walks their queues
                fs->shutdown();
                rc = rc == 0 ? 0 : 1;
            }
            // Gone from here already: an unmount now could detach whatever was mounted on
            // that path since.
            if (!watch.gone()) fuse_session_unmount(se);
        }
        fuse_remove_signal_handlers(se);
    }
    fuse_session_destroy(se);
    fs.reset();
    cleanup();
    return rc;
}

}  // namespace cloudvmi::fs
