// File operations on the guest's own file namespace, each built as one or a few batches.
//
// The guest's errno is returned unchanged (Error::from_guest()). Everything the guest sends
// back is untrusted: lengths are clamped to what was asked, directory records are
// bounds-checked and names containing '/' or NUL, or longer than NAME_MAX, are dropped.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.h"
#include "redirector/session/guest_session.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

struct GuestStat {
    uint64_t dev = 0;
    uint64_t ino = 0;
    uint32_t mode = 0;
    uint64_t nlink = 0;
    uint32_t uid = 0;
    uint32_t gid = 0;
    uint64_t rdev = 0;
    int64_t size = 0;
    int64_t blksize = 0;
    int64_t blocks = 0;
    int64_t atime_sec = 0, atime_nsec = 0;
    int64_t mtime_sec = 0, mtime_nsec = 0;
    int64_t ctime_sec = 0, ctime_nsec = 0;
};

struct GuestDirEntry {
    uint64_t ino = 0;
    uint8_t type = 0;  // DT_* as the guest reports it
    std::string name;
};

struct GuestUname {
    std::string sysname, nodename, release, version, machine, domainname;
};

// An entry with its attributes, as `ls -l` wants them (stat may fail per entry: a process
// that exits between getdents and stat).
struct GuestDirEntryWithStat {
    GuestDirEntry entry;
    std::optional<GuestStat> stat;
    int stat_errno = 0;
};

// A guest fd: a number in one shadow's fd table, meaningless in any other.
struct GuestFd {
    int fd = -1;
    uint64_t shadow = 0;  // BatchOutcome::shadow of the batch that opened it
};

class GuestFileOps {
  public:
    explicit GuestFileOps(GuestSession& session) : session_(session) {}

    // Chunk size for reads and writes through the shadow's data area.
    static constexpr size_t kMaxTransfer = 256 * 1024;
    static constexpr size_t kMaxPath = 4096;
    // Guest open flags for reading: never blocks on a FIFO, never takes a controlling tty.
    static constexpr uint64_t kOpenForReading =
        x86abi::kORdonly | x86abi::kONoctty | x86abi::kONonblock;

    ErrorOr<GuestFd> open(const std::string& path, uint64_t flags, uint32_t mode = 0);
    ErrorOr<void> close(GuestFd fd);

    // Opens and reads the first `size` bytes in one batch (what `cat` needs).
    struct OpenedFile {
        GuestFd fd;
        std::vector<uint8_t> head;
        bool eof = false;  // the file ended within `head`
    };
    ErrorOr<OpenedFile> open_and_read(const std::string& path, uint64_t flags, size_t size);
    // Closes later, with the session's next batch (see GuestSession::defer_close).
    void close_soon(GuestFd fd);
    ErrorOr<std::vector<uint8_t>> pread(GuestFd fd, size_t size, uint64_t offset);
    ErrorOr<std::vector<uint8_t>> read(GuestFd fd, size_t size);
    ErrorOr<size_t> pwrite(GuestFd fd, const std::vector<uint8_t>& data, uint64_t offset);
    ErrorOr<size_t> write(GuestFd fd, const std::vector<uint8_t>& data);

    // Reads a whole file; one batch for proc and sys files. A file of more than `max_bytes`
    // is EFBIG, never cut short.
    static constexpr size_t kMaxFileBytes = 64u << 20;
    ErrorOr<std::vector<uint8_t>> read_file(const std::string& path,
                                            size_t max_bytes = kMaxFileBytes);
    // The first `max_bytes` bytes of a file (all of it if shorter): a prefix asked for.
    ErrorOr<std::vector<uint8_t>> read_head(const std::string& path, size_t max_bytes);
    // open(O_WRONLY [|O_TRUNC]) + write + close in one batch; returns bytes written.
    ErrorOr<size_t> write_file(const std::string& path, const std::vector<uint8_t>& data,
                               bool truncate = false);

    ErrorOr<GuestStat> stat(const std::string& path, bool follow_symlinks = false);
    ErrorOr<GuestStat> fstat(GuestFd fd);
    ErrorOr<std::string> readlink(const std::string& path);
    // A directory of more than `max_entries` entries is E2BIG, never cut short.
    static constexpr size_t kMaxDirEntries = 500000;
    ErrorOr<std::vector<GuestDirEntry>> list_dir(const std::string& path,
                                                 size_t max_entries = kMaxDirEntries);
    // getdents64 and then one newfstatat per entry, batched.
    ErrorOr<std::vector<GuestDirEntryWithStat>> list_dir_with_stats(
        const std::string& path, size_t max_entries = kMaxDirEntries);
    ErrorOr<GuestUname> uname();
    ErrorOr<void> kill(int64_t pid, int signal);

  private:
    // Reads on from `content` until EOF or max_bytes: pread from `offset`, or read where
    // the fd stands when the file cannot be read at an offset. Closes the fd.
    ErrorOr<std::vector<uint8_t>> read_rest(GuestFd fd, std::vector<uint8_t> content,
                                            std::optional<uint64_t> offset, size_t max_bytes);
    GuestSession& session_;
};

// --- batch pieces shared by the file operations and the changes ---

// The fd an open op returned, checked: it comes from the guest (EPROTO otherwise).
ErrorOr<GuestFd> opened_fd(const BatchOutcome& out, SyscallBatch::OpId op);
// Adds a newfstatat(fd, "", AT_EMPTY_PATH) of `fd` (an immediate or an earlier op's
// result) whose struct stat lands in `buffer`.
struct GuestStatOp {
    SyscallBatch::OpId op;
    SyscallBatch::BufferId buffer;
};
GuestStatOp add_fstat(SyscallBatch& b, SyscallBatch::Arg fd);

// --- parsing of guest-written structures, pure and unit-tested ---

// Parses a getdents64 buffer; malformed records end the parse, bad names are skipped.
// `skipped` counts dropped names.
std::vector<GuestDirEntry> parse_dirents(std::span<const uint8_t> buf, int* skipped = nullptr);
GuestStat parse_stat(std::span<const uint8_t> buf);
GuestUname parse_utsname(std::span<const uint8_t> buf);
// Checks a guest-supplied file name for use as a path component.
bool is_safe_name(std::string_view name);

}  // namespace cloudvmi
