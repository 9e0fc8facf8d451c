#include "redirector/session/guest_changes.h"

#include <cstring>

#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

namespace {

using namespace x86abi;
using B = SyscallBatch;

constexpr uint64_t kNoLinks = kResolveNoSymlinks | kResolveNoMagiclinks;

ErrorOr<void> check_path(const std::string& path) {
    if (path.empty() || path[0] != '/') return refuse(EINVAL, "not an absolute guest path");
    if (path.size() >= GuestFileOps::kMaxPath) return refuse(ENAMETOOLONG, path.substr(0, 64));
    if (path.find('\0') != std::string::npos) return refuse(EINVAL, "path contains NUL");
    return {};
}

std::vector<uint8_t> open_how(uint64_t flags, uint64_t mode) {
    uint64_t fields[3] = {flags | kOCloexec, mode, kNoLinks};
    std::vector<uint8_t> out(kOpenHowSize);
    std::memcpy(out.data(), fields, kOpenHowSize);
    return out;
}

// An openat2 of `path` that follows no symlink; the rest of the batch is cancelled if it
// fails.
B::OpId add_open(B& b, const std::string& path, uint64_t flags, uint64_t mode = 0) {
    auto p = b.input_string(path);
    auto how = b.input(open_how(flags, mode));
    return b.add(kOpenat2, {B::imm_signed(kAtFdcwd), B::buf(p), B::buf(how), B::imm(kOpenHowSize)},
                 true);
}

B::OpId add_open_dir(B& b, const std::string& dir) {
    return add_open(b, dir, kOPath | kODirectory);
}

// The first op of `ops` (in batch order) that failed, as the error the caller sees: the
// guest's errno, except an openat2 the guest kernel does not have.
ErrorOr<void> first_failure(const BatchOutcome& out, std::initializer_list<B::OpId> ops,
                            B::OpId open_op, const std::string& what) {
    for (B::OpId op : ops) {
        if (!out.failed(op)) continue;
        int e = out.error_of(op);
        if (op == open_op && e == ENOSYS) {
            return refuse(EOPNOTSUPP,
                          "the guest kernel has no openat2(2): changes need Linux 5.6 or later");
        }
        return guest_error(e, what);
    }
    return {};
}

uint64_t open_flags(WriteMode how) {
    uint64_t f = how.read_too ? kORdwr : kOWronly;
    if (how.append) f |= kOAppend;
    if (how.truncate) f |= kOTrunc;
    if (how.exclusive) f |= kOExcl;
    return f | kONoctty | kONonblock;
}

// A file pinned by an O_PATH fd (no symlink on the way), checked to be a regular file or a
// directory in the same batch: a device, FIFO or socket is never opened for a change
// (opening /dev/watchdog arms it; closing a FIFO's writer ends its reader's input). The
// change then goes through /proc/self/fd/N, which names exactly the pinned file.
struct Pinned {
    GuestFd fd;
    std::string proc_path;
};

ErrorOr<Pinned> pin(GuestSession& session, const std::string& path, bool directory_ok) {
    TRY(check_path(path));
    SyscallBatch b;
    auto open = add_open(b, path, kOPath);
    auto st = add_fstat(b, B::result_of(open));
    auto out = TRY(session.run(b));
    TRY(first_failure(out, {open}, open, path));
    Pinned p{TRY(opened_fd(out, open)), ""};
    p.proc_path = "/proc/self/fd/" + std::to_string(p.fd.fd);
    uint32_t type = out.failed(st.op) ? 0 : parse_stat(out.bytes(st.buffer)).mode & 0170000;
    bool usable = type == 0100000 || (directory_ok && type == 0040000);
    if (!usable) {
        session.defer_close(p.fd.fd, p.fd.shadow);
        if (out.failed(st.op)) return guest_error(out.error_of(st.op), path);
        return refuse(EOPNOTSUPP, path + " is not a regular file: not changed through the mount");
    }
    return p;
}

}  // namespace

GuestTime GuestTime::now() {
    return GuestTime{0, kUtimeNow};
}

GuestTime GuestTime::omit() {
    return GuestTime{0, kUtimeOmit};
}

ErrorOr<std::pair<std::string, std::string>> split_parent(const std::string& path) {
    TRY(check_path(path));
    size_t slash = path.rfind('/');
    std::string name = path.substr(slash + 1);
    if (!is_safe_name(name) || name == "." || name == "..")
        return refuse(EINVAL, "no file name in " + path);
    return std::pair{slash == 0 ? std::string("/") : path.substr(0, slash), name};
}

ErrorOr<GuestFd> GuestChanges::open_for_writing(const std::string& path, WriteMode how) {
    how.exclusive = false;
    Pinned pinned = TRY(pin(session_, path, false));
    // Reopened through the pin: the same file, whatever the guest renamed meanwhile.
    SyscallBatch b;
    auto at = b.input_string(pinned.proc_path);
    auto open =
        b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(at), B::imm(open_flags(how) | kOCloexec)});
    b.add(kClose, {B::imm(static_cast<uint64_t>(pinned.fd.fd))});
    auto out = TRY(session_.run(b, pinned.fd.shadow));
    if (out.failed(open)) return guest_error(out.error_of(open), path);
    return opened_fd(out, open);
}

ErrorOr<GuestChanges::Created> GuestChanges::create(const std::string& path, WriteMode how,
                                                    uint32_t mode) {
    TRY(check_path(path));
    SyscallBatch b;
    // Always O_EXCL in the guest: a file that appeared meanwhile is not truncated or
    // opened under a `create` decision (EEXIST; the caller looks it up again).
    how.exclusive = true;
    auto open = add_open(b, path, open_flags(how) | kOCreat, mode & 07777);
    auto st = add_fstat(b, B::result_of(open));
    auto out = TRY(session_.run(b));
    TRY(first_failure(out, {open}, open, path));
    Created c{TRY(opened_fd(out, open)), {}};
    if (out.failed(st.op)) {
        session_.defer_close(c.fd.fd, c.fd.shadow);
        return guest_error(out.error_of(st.op), path);
    }
    c.stat = parse_stat(out.bytes(st.buffer));
    return c;
}

namespace {

// Makes a new entry in its parent directory (`add_make(batch, parent fd, name)` adds the
// op that makes it) and returns its attributes, read through the same parent fd.
template <class AddMake>
ErrorOr<GuestStat> make_entry(GuestSession& session, const std::string& path, AddMake add_make) {
    auto [dir, name] = TRY(split_parent(path));
    SyscallBatch b;
    auto open = add_open_dir(b, dir);
    auto n = b.input_string(name);
    // Nothing after the open stops the batch: the close must run.
    auto make = add_make(b, B::result_of(open), B::buf(n));
    auto st = b.output(sizeof(Stat));
    auto stat =
        b.add(kNewfstatat, {B::result_of(open), B::buf(n), B::buf(st), B::imm(kAtSymlinkNofollow)});
    b.filled_by(st, stat, B::Fill::kWhole);
    b.add(kClose, {B::result_of(open)});
    auto out = TRY(session.run(b));
    TRY(first_failure(out, {open, make, stat}, open, path));
    return parse_stat(out.bytes(st));
}

}  // namespace

ErrorOr<GuestStat> GuestChanges::mkdir(const std::string& path, uint32_t mode) {
    return make_entry(session_, path, [&](B& b, B::Arg dir, B::Arg name) {
        return b.add(kMkdirat, {dir, name, B::imm(mode & 07777)});
    });
}

namespace {

ErrorOr<void> remove(GuestSession& session, const std::string& path, uint64_t flags) {
    auto [dir, name] = TRY(split_parent(path));
    SyscallBatch b;
    auto open = add_open_dir(b, dir);
    auto n = b.input_string(name);
    auto unlink = b.add(kUnlinkat, {B::result_of(open), B::buf(n), B::imm(flags)});
    b.add(kClose, {B::result_of(open)});
    auto out = TRY(session.run(b));
    return first_failure(out, {open, unlink}, open, path);
}

}  // namespace

ErrorOr<void> GuestChanges::unlink(const std::string& path) {
    return remove(session_, path, 0);
}

ErrorOr<void> GuestChanges::rmdir(const std::string& path) {
    return remove(session_, path, kAtRemovedir);
}

ErrorOr<void> GuestChanges::rename(const std::string& from, const std::string& to,
                                   RenameMode mode) {
    uint64_t flags =
        (mode.no_replace ? kRenameNoreplace : 0) | (mode.exchange ? kRenameExchange : 0);
    auto [from_dir, from_name] = TRY(split_parent(from));
    auto [to_dir, to_name] = TRY(split_parent(to));
    SyscallBatch b;
    auto open_from = add_open_dir(b, from_dir);
    auto open_to = add_open_dir(b, to_dir);
    auto fn = b.input_string(from_name);
    auto tn = b.input_string(to_name);
    auto rename = b.add(kRenameat2, {B::result_of(open_from), B::buf(fn), B::result_of(open_to),
                                     B::buf(tn), B::imm(flags)});
    b.add(kClose, {B::result_of(open_from)});
    b.add(kClose, {B::result_of(open_to)});
    auto out = TRY(session_.run(b));
    // A failed second open cancels the closes: the first fd is closed with the next batch.
    if (out.failed(open_to) && !out.failed(open_from)) {
        session_.defer_close(static_cast<int>(out.result(open_from)), out.shadow);
    }
    if (auto r = first_failure(out, {open_from}, open_from, from); !r) return r;
    if (auto r = first_failure(out, {open_to}, open_to, to); !r) return r;
    return first_failure(out, {rename}, open_from, from + " -> " + to);
}

ErrorOr<GuestStat> GuestChanges::symlink(const std::string& target, const std::string& path) {
    if (target.empty() || target.size() >= GuestFileOps::kMaxPath ||
        target.find('\0') != std::string::npos) {
        return refuse(EINVAL, "bad symbolic link target");
    }
    return make_entry(session_, path, [&](B& b, B::Arg dir, B::Arg name) {
        auto t = b.input_string(target);
        return b.add(kSymlinkat, {B::buf(t), dir, name});
    });
}

namespace {

// Pins `path`, then runs `add_op(batch, /proc/self/fd/N)` and closes the pin.
template <class AddOp>
ErrorOr<void> on_file(GuestSession& session, const std::string& path, bool directory_ok,
                      AddOp add_op) {
    Pinned pinned = TRY(pin(session, path, directory_ok));
    SyscallBatch b;
    auto at = b.input_string(pinned.proc_path);
    auto op = add_op(b, B::buf(at));
    b.add(kClose, {B::imm(static_cast<uint64_t>(pinned.fd.fd))});
    auto out = TRY(session.run(b, pinned.fd.shadow));
    if (out.failed(op)) return guest_error(out.error_of(op), path);
    return {};
}

}  // namespace

ErrorOr<void> GuestChanges::chmod(const std::string& path, uint32_t mode) {
    return on_file(session_, path, true, [&](B& b, B::Arg at) {
        return b.add(kFchmodat, {B::imm_signed(kAtFdcwd), at, B::imm(mode & 07777)});
    });
}

ErrorOr<void> GuestChanges::chown(const std::string& path, std::optional<uint32_t> uid,
                                  std::optional<uint32_t> gid) {
    auto [dir, name] = TRY(split_parent(path));
    SyscallBatch b;
    auto open = add_open_dir(b, dir);
    auto n = b.input_string(name);
    // -1 (as a 32-bit id) leaves an id unchanged.
    uint64_t u = uid ? *uid : 0xffffffffu;
    uint64_t g = gid ? *gid : 0xffffffffu;
    auto own = b.add(kFchownat, {B::result_of(open), B::buf(n), B::imm(u), B::imm(g),
                                 B::imm(kAtSymlinkNofollow)});
    b.add(kClose, {B::result_of(open)});
    auto out = TRY(session_.run(b));
    return first_failure(out, {open, own}, open, path);
}

ErrorOr<void> GuestChanges::truncate(const std::string& path, uint64_t size) {
    return on_file(session_, path, false, [&](B& b, B::Arg at) {
        return b.add(kTruncate, {at, B::imm(size)});
    });
}

ErrorOr<void> GuestChanges::set_times(const std::string& path, GuestTime atime, GuestTime mtime) {
    auto [dir, name] = TRY(split_parent(path));
    int64_t times[4] = {atime.sec, atime.nsec, mtime.sec, mtime.nsec};
    std::vector<uint8_t> raw(sizeof times);
    std::memcpy(raw.data(), times, sizeof times);
    SyscallBatch b;
    auto open = add_open_dir(b, dir);
    auto n = b.input_string(name);
    auto t = b.input(raw);
    auto set =
        b.add(kUtimensat, {B::result_of(open), B::buf(n), B::buf(t), B::imm(kAtSymlinkNofollow)});
    b.add(kClose, {B::result_of(open)});
    auto out = TRY(session_.run(b));
    return first_failure(out, {open, set}, open, path);
}

ErrorOr<void> GuestChanges::setxattr(const std::string& path, const std::string& name,
                                     const std::vector<uint8_t>& value, int flags) {
    if (name.empty() || name.size() > 255 || name.find('\0') != std::string::npos)
        return refuse(EINVAL, "bad attribute name");
    if (value.size() > 65536) return refuse(E2BIG, "attribute value too large");
    return on_file(session_, path, true, [&](B& b, B::Arg at) {
        auto n = b.input_string(name);
        auto v = b.input(value);
        return b.add(kSetxattr, {at, B::buf(n), B::buf(v), B::imm(value.size()),
                                 B::imm(static_cast<uint64_t>(flags))});
    });
}

}  // namespace cloudvmi
