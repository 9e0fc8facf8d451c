#include "redirector/session/guest_file_ops.h"

#include <cstring>

#include "common/log.h"
#include "common/strings.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

namespace {

using namespace x86abi;
using B = SyscallBatch;

constexpr size_t kNameMax = 255;
constexpr size_t kDirentBuffer = 64 * 1024;
// One batch holds a getdents64 plus this many newfstatat calls.
constexpr size_t kStatsPerBatch = 96;

Error guest_failure(const BatchOutcome& out, SyscallBatch::OpId op, const std::string& what) {
    return Error::guest(out.error_of(op), what);
}

ErrorOr<void> check_path(const std::string& path) {
    if (path.empty()) return make_error(ENOENT, "empty path");
    if (path.size() >= GuestFileOps::kMaxPath) return refuse(ENAMETOOLONG, path.substr(0, 64));
    if (path.find('\0') != std::string::npos) return make_error(EINVAL, "path contains NUL");
    return {};
}

}  // namespace

ErrorOr<GuestFd> opened_fd(const BatchOutcome& out, SyscallBatch::OpId op) {
    int64_t fd = out.result(op);
    if (fd < 0 || fd > 0x7fffffff) return make_error(EPROTO, "guest returned a bad fd");
    return GuestFd{static_cast<int>(fd), out.shadow};
}

GuestStatOp add_fstat(SyscallBatch& b, SyscallBatch::Arg fd) {
    auto empty = b.input_string("");
    auto st = b.output(sizeof(Stat));
    auto op = b.add(kNewfstatat, {fd, SyscallBatch::buf(empty), SyscallBatch::buf(st),
                                  SyscallBatch::imm(kAtEmptyPath)});
    b.filled_by(st, op, SyscallBatch::Fill::kWhole);
    return {op, st};
}

bool is_safe_name(std::string_view name) {
    return !name.empty() && name.size() <= kNameMax && name.find('/') == std::string_view::npos &&
           name.find('\0') == std::string_view::npos;
}

std::vector<GuestDirEntry> parse_dirents(std::span<const uint8_t> buf, int* skipped) {
    std::vector<GuestDirEntry> out;
    size_t pos = 0;
    while (pos + kDirent64NameOffset < buf.size()) {
        Dirent64Header h;
        std::memcpy(&h.d_ino, buf.data() + pos, 8);
        std::memcpy(&h.d_off, buf.data() + pos + 8, 8);
        std::memcpy(&h.d_reclen, buf.data() + pos + 16, 2);
        h.d_type = buf[pos + 18];
        if (h.d_reclen <= kDirent64NameOffset || pos + h.d_reclen > buf.size()) {
            LOG_WARN("malformed directory record from the guest (reclen %u at %zu of %zu)",
                     h.d_reclen, pos, buf.size());
            if (skipped) ++*skipped;
            break;
        }
        const char* name = reinterpret_cast<const char*>(buf.data() + pos + kDirent64NameOffset);
        size_t max_len = h.d_reclen - kDirent64NameOffset;
        size_t len = strnlen(name, max_len);
        std::string_view n(name, len);
        if (len == max_len || !is_safe_name(n)) {
            // Unterminated, empty, too long or containing '/': not a name we can serve.
            LOG_WARN("skipping unusable guest file name '%s'", printable(n).c_str());
            if (skipped) ++*skipped;
        } else {
            out.push_back({h.d_ino, h.d_type, std::string(n)});
        }
        pos += h.d_reclen;
    }
    return out;
}

GuestStat parse_stat(std::span<const uint8_t> buf) {
    Stat s{};
    if (!buf.empty()) std::memcpy(&s, buf.data(), std::min(buf.size(), sizeof s));
    GuestStat g;
    g.dev = s.st_dev;
    g.ino = s.st_ino;
    g.mode = s.st_mode;
    g.nlink = s.st_nlink;
    g.uid = s.st_uid;
    g.gid = s.st_gid;
    g.rdev = s.st_rdev;
    g.size = s.st_size;
    g.blksize = s.st_blksize;
    g.blocks = s.st_blocks;
    g.atime_sec = static_cast<int64_t>(s.st_atime_sec);
    g.atime_nsec = static_cast<int64_t>(s.st_atime_nsec % 1000000000);
    g.mtime_sec = static_cast<int64_t>(s.st_mtime_sec);
    g.mtime_nsec = static_cast<int64_t>(s.st_mtime_nsec % 1000000000);
    g.ctime_sec = static_cast<int64_t>(s.st_ctime_sec);
    g.ctime_nsec = static_cast<int64_t>(s.st_ctime_nsec % 1000000000);
    return g;
}

GuestUname parse_utsname(std::span<const uint8_t> buf) {
    auto field = [&](size_t i) {
        if ((i + 1) * kUtsFieldSize > buf.size()) return std::string();
        const char* p = reinterpret_cast<const char*>(buf.data() + i * kUtsFieldSize);
        return std::string(p, strnlen(p, kUtsFieldSize));
    };
    return {field(0), field(1), field(2), field(3), field(4), field(5)};
}

ErrorOr<GuestFd> GuestFileOps::open(const std::string& path, uint64_t flags, uint32_t mode) {
    TRY(check_path(path));
    SyscallBatch b;
    auto p = b.input_string(path);
    auto op = b.add(kOpenat,
                    {B::imm_signed(kAtFdcwd), B::buf(p), B::imm(flags | kOCloexec), B::imm(mode)});
    auto out = TRY(session_.run(b));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, path));
    return opened_fd(out, op);
}

ErrorOr<GuestFileOps::OpenedFile> GuestFileOps::open_and_read(const std::string& path,
                                                              uint64_t flags, size_t size) {
    TRY(check_path(path));
    size = std::min(size, kMaxTransfer);
    // A short read is not the end of a file (seq_file hands out a page at a time): the
    // second read starts where the first stopped, and only a read of 0 bytes means EOF.
    SyscallBatch b;
    auto p = b.input_string(path);
    auto open_op =
        b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p), B::imm(flags | kOCloexec)}, true);
    auto first = b.output(size);
    auto read1 = b.add(kPread64, {B::result_of(open_op), B::buf(first), B::imm(size), B::imm(0)});
    b.filled_by(first, read1, B::Fill::kResultBytes);
    auto second = b.output(size);
    auto read2 =
        b.add(kPread64, {B::result_of(open_op), B::buf(second), B::imm(size), B::result_of(read1)});
    b.filled_by(second, read2, B::Fill::kResultBytes);
    auto out = TRY(session_.run(b));
    if (out.failed(open_op)) return std::unexpected(guest_failure(out, open_op, path));
    OpenedFile f;
    f.fd = TRY(opened_fd(out, open_op));
    // A file that cannot be read at an offset (a pipe-like proc file) is still open: the
    // caller reads it sequentially.
    if (!out.failed(read1)) {
        f.head = out.take(first);
        if (!out.failed(read2)) {
            const auto& more = out.bytes(second);
            f.head.insert(f.head.end(), more.begin(), more.end());
            f.eof = more.empty();
        }
    }
    return f;
}

void GuestFileOps::close_soon(GuestFd fd) {
    session_.defer_close(fd.fd, fd.shadow);
}

ErrorOr<void> GuestFileOps::close(GuestFd fd) {
    SyscallBatch b;
    auto op = b.add(kClose, {B::imm(static_cast<uint64_t>(fd.fd))});
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "close"));
    return {};
}

ErrorOr<std::vector<uint8_t>> GuestFileOps::pread(GuestFd fd, size_t size, uint64_t offset) {
    size = std::min(size, kMaxTransfer);
    SyscallBatch b;
    auto data = b.output(size);
    auto op = b.add(kPread64, {B::imm(static_cast<uint64_t>(fd.fd)), B::buf(data), B::imm(size),
                               B::imm(offset)});
    b.filled_by(data, op, B::Fill::kResultBytes);
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "read"));
    return out.take(data);
}

ErrorOr<std::vector<uint8_t>> GuestFileOps::read(GuestFd fd, size_t size) {
    size = std::min(size, kMaxTransfer);
    SyscallBatch b;
    auto data = b.output(size);
    auto op = b.add(kRead, {B::imm(static_cast<uint64_t>(fd.fd)), B::buf(data), B::imm(size)});
    b.filled_by(data, op, B::Fill::kResultBytes);
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "read"));
    return out.take(data);
}

ErrorOr<size_t> GuestFileOps::pwrite(GuestFd fd, const std::vector<uint8_t>& data,
                                     uint64_t offset) {
    size_t n = std::min(data.size(), kMaxTransfer);
    SyscallBatch b;
    auto in = b.input(std::span(data.data(), n));
    auto op = b.add(kPwrite64,
                    {B::imm(static_cast<uint64_t>(fd.fd)), B::buf(in), B::imm(n), B::imm(offset)});
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "write"));
    return std::min<size_t>(static_cast<size_t>(out.result(op)), n);
}

ErrorOr<size_t> GuestFileOps::write(GuestFd fd, const std::vector<uint8_t>& data) {
    size_t n = std::min(data.size(), kMaxTransfer);
    SyscallBatch b;
    auto in = b.input(std::span(data.data(), n));
    auto op = b.add(kWrite, {B::imm(static_cast<uint64_t>(fd.fd)), B::buf(in), B::imm(n)});
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "write"));
    return std::min<size_t>(static_cast<size_t>(out.result(op)), n);
}

namespace {

Error too_big(const std::string& path, size_t max_bytes) {
    return Error::refusal(EFBIG,
                          strformat("%s is larger than %zu bytes, the most read at once (read it "
                                    "through an open file instead)",
                                    path.c_str(), max_bytes));
}

}  // namespace

ErrorOr<std::vector<uint8_t>> GuestFileOps::read_file(const std::string& path, size_t max_bytes) {
    // One byte more than allowed tells a file that fits from one that does not.
    auto content = TRY(read_head(path, max_bytes + 1));
    if (content.size() > max_bytes) return std::unexpected(too_big(path, max_bytes));
    return content;
}

ErrorOr<std::vector<uint8_t>> GuestFileOps::read_head(const std::string& path, size_t max_bytes) {
    // One batch for a proc or sys file (open, then two reads: the second sees EOF); bigger
    // files go on with reads of the same fd.
    auto opened = TRY(open_and_read(path, kOpenForReading, std::min<size_t>(64 * 1024, max_bytes)));
    std::vector<uint8_t> content = std::move(opened.head);
    if (!opened.eof) {
        // Nothing came back when the file is not readable at an offset: read it from the
        // start (the preads left the fd there), sequentially.
        std::optional<uint64_t> offset;
        if (!content.empty()) offset = content.size();
        auto rest = read_rest(opened.fd, std::move(content), offset, max_bytes);
        if (!rest) {
            close_soon(opened.fd);
            return std::unexpected(rest.error());
        }
        content = std::move(*rest);
    }
    close_soon(opened.fd);
    if (content.size() > max_bytes) content.resize(max_bytes);
    return content;
}

ErrorOr<std::vector<uint8_t>> GuestFileOps::read_rest(GuestFd fd, std::vector<uint8_t> content,
                                                      std::optional<uint64_t> offset,
                                                      size_t max_bytes) {
    while (content.size() < max_bytes) {
        size_t want = std::min(kMaxTransfer, max_bytes - content.size());
        auto chunk = TRY(offset ? pread(fd, want, *offset) : read(fd, want));
        if (chunk.empty()) break;
        if (offset) *offset += chunk.size();
        content.insert(content.end(), chunk.begin(), chunk.end());
    }
    return content;
}

ErrorOr<size_t> GuestFileOps::write_file(const std::string& path, const std::vector<uint8_t>& data,
                                         bool truncate) {
    TRY(check_path(path));
    if (data.size() > kMaxTransfer) return refuse(EFBIG, "write_file: data too large");
    SyscallBatch b;
    auto p = b.input_string(path);
    auto in = b.input(data);
    uint64_t flags = kOWronly | kOCloexec | kONoctty | (truncate ? kOTrunc : 0);
    auto open_op = b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p), B::imm(flags)}, true);
    auto write_op = b.add(kWrite, {B::result_of(open_op), B::buf(in), B::imm(data.size())});
    auto close_op = b.add(kClose, {B::result_of(open_op)});
    auto out = TRY(session_.run(b));
    if (out.failed(open_op)) return std::unexpected(guest_failure(out, open_op, path));
    if (out.failed(write_op)) return std::unexpected(guest_failure(out, write_op, path));
    if (out.failed(close_op)) return std::unexpected(guest_failure(out, close_op, path));
    return std::min<size_t>(static_cast<size_t>(out.result(write_op)), data.size());
}

ErrorOr<GuestStat> GuestFileOps::stat(const std::string& path, bool follow_symlinks) {
    TRY(check_path(path));
    SyscallBatch b;
    auto p = b.input_string(path);
    auto st = b.output(sizeof(Stat));
    auto op = b.add(kNewfstatat, {B::imm_signed(kAtFdcwd), B::buf(p), B::buf(st),
                                  B::imm(follow_symlinks ? 0 : kAtSymlinkNofollow)});
    b.filled_by(st, op, B::Fill::kWhole);
    auto out = TRY(session_.run(b));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, path));
    return parse_stat(out.bytes(st));
}

ErrorOr<GuestStat> GuestFileOps::fstat(GuestFd fd) {
    SyscallBatch b;
    auto st = add_fstat(b, B::imm(static_cast<uint64_t>(fd.fd)));
    auto out = TRY(session_.run(b, fd.shadow));
    if (out.failed(st.op)) return std::unexpected(guest_failure(out, st.op, "fstat"));
    return parse_stat(out.bytes(st.buffer));
}

ErrorOr<std::string> GuestFileOps::readlink(const std::string& path) {
    TRY(check_path(path));
    SyscallBatch b;
    auto p = b.input_string(path);
    auto target = b.output(kMaxPath);
    auto op =
        b.add(kReadlinkat, {B::imm_signed(kAtFdcwd), B::buf(p), B::buf(target), B::imm(kMaxPath)});
    b.filled_by(target, op, B::Fill::kResultBytes);
    auto out = TRY(session_.run(b));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, path));
    const auto& bytes = out.bytes(target);
    return std::string(bytes.begin(), bytes.end());
}

ErrorOr<std::vector<GuestDirEntry>> GuestFileOps::list_dir(const std::string& path,
                                                           size_t max_entries) {
    TRY(check_path(path));
    SyscallBatch b;
    auto p = b.input_string(path);
    auto open_op = b.add(kOpenat,
                         {B::imm_signed(kAtFdcwd), B::buf(p),
                          B::imm(kORdonly | kODirectory | kOCloexec | kONonblock)},
                         true);
    auto buf = b.output(kDirentBuffer);
    auto dents_op = b.add(kGetdents64, {B::result_of(open_op), B::buf(buf), B::imm(kDirentBuffer)});
    b.filled_by(buf, dents_op, B::Fill::kResultBytes);
    auto out = TRY(session_.run(b));
    if (out.failed(open_op)) return std::unexpected(guest_failure(out, open_op, path));
    GuestFd fd = TRY(opened_fd(out, open_op));
    std::vector<GuestDirEntry> entries;
    std::optional<Error> err;
    auto result = out.result(dents_op);
    auto bytes = out.bytes(buf);
    while (true) {
        if (out.failed(dents_op)) {
            err = guest_failure(out, dents_op, path);
            break;
        }
        if (result == 0) break;
        for (auto& e : parse_dirents(bytes))
            entries.push_back(std::move(e));
        if (entries.size() > max_entries) {
            err = Error::refusal(
                E2BIG, strformat("%s has more than %zu entries", path.c_str(), max_entries));
            break;
        }
        SyscallBatch more;
        auto mbuf = more.output(kDirentBuffer);
        auto mop = more.add(kGetdents64, {B::imm(static_cast<uint64_t>(fd.fd)), B::buf(mbuf),
                                          B::imm(kDirentBuffer)});
        more.filled_by(mbuf, mop, B::Fill::kResultBytes);
        auto next = session_.run(more, fd.shadow);
        if (!next) {
            err = next.error();
            break;
        }
        out = std::move(*next);
        dents_op = mop;
        buf = mbuf;
        result = out.result(mop);
        bytes = out.bytes(mbuf);
    }
    auto closed = close(fd);
    if (err) return std::unexpected(*err);
    if (!closed) return std::unexpected(closed.error());
    return entries;
}

ErrorOr<std::vector<GuestDirEntryWithStat>> GuestFileOps::list_dir_with_stats(
    const std::string& path, size_t max_entries) {
    auto entries = TRY(list_dir(path, max_entries));
    std::vector<GuestDirEntryWithStat> out;
    out.reserve(entries.size());
    std::string base = path.back() == '/' ? path : path + "/";
    for (size_t start = 0; start < entries.size(); start += kStatsPerBatch) {
        size_t end = std::min(entries.size(), start + kStatsPerBatch);
        SyscallBatch b;
        std::vector<std::pair<SyscallBatch::OpId, SyscallBatch::BufferId>> ops;
        for (size_t i = start; i < end; ++i) {
            auto p = b.input_string(base + entries[i].name);
            auto st = b.output(sizeof(Stat));
            auto op = b.add(kNewfstatat, {B::imm_signed(kAtFdcwd), B::buf(p), B::buf(st),
                                          B::imm(kAtSymlinkNofollow)});
            b.filled_by(st, op, B::Fill::kWhole);
            ops.emplace_back(op, st);
        }
        auto res = TRY(session_.run(b));
        for (size_t i = start; i < end; ++i) {
            GuestDirEntryWithStat e;
            e.entry = std::move(entries[i]);
            auto [op, st] = ops[i - start];
            if (res.failed(op)) {
                e.stat_errno = res.error_of(op);
            } else {
                e.stat = parse_stat(res.bytes(st));
            }
            out.push_back(std::move(e));
        }
    }
    return out;
}

ErrorOr<GuestUname> GuestFileOps::uname() {
    SyscallBatch b;
    auto buf = b.output(kUtsnameSize);
    auto op = b.add(kUname, {B::buf(buf)});
    b.filled_by(buf, op, B::Fill::kWhole);
    auto out = TRY(session_.run(b));
    if (out.failed(op)) return std::unexpected(guest_failure(out, op, "uname"));
    return parse_utsname(out.bytes(buf));
}

ErrorOr<void> GuestFileOps::kill(int64_t pid, int signal) {
    SyscallBatch b;
    auto op =
        b.add(kKill, {B::imm(static_cast<uint64_t>(pid)), B::imm(static_cast<uint64_t>(signal))});
    auto out = TRY(session_.run(b));
    if (out.failed(op)) {
        return std::unexpected(
            guest_failure(out, op, strformat("kill %lld", static_cast<long long>(pid))));
    }
    return {};
}

}  // namespace cloudvmi
