#include "redirector/journal/recovery_log.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/paths.h"
#include "common/unique_fd.h"

namespace cloudvmi {

namespace {

static_assert(std::is_trivially_copyable_v<RecoveryRecord>);

// On-disk/in-mapping layout: a sequence number selects which of two slots is current.
struct LogFile {
    uint64_t magic;
    uint64_t sequence;  // accessed with __atomic builtins: the file is shared
    RecoveryRecord slots[2];
};
constexpr uint64_t kFileMagic = 0x676f6c6976636c63ULL;  // "clcvilog"

}  // namespace

bool RecoveryRecord::has_breakpoint(uint64_t addr) const {
    for (uint32_t i = 0; i < breakpoint_count && i < kMaxBreakpoints; ++i) {
        if (breakpoints[i] == addr) return true;
    }
    return false;
}

void RecoveryRecord::add_breakpoint(uint64_t addr) {
    if (has_breakpoint(addr) || breakpoint_count >= kMaxBreakpoints) return;
    breakpoints[breakpoint_count++] = addr;
}

void RecoveryRecord::remove_breakpoint(uint64_t addr) {
    for (uint32_t i = 0; i < breakpoint_count; ++i) {
        if (breakpoints[i] == addr) {
            breakpoints[i] = breakpoints[--breakpoint_count];
            breakpoints[breakpoint_count] = 0;
            return;
        }
    }
}

bool RecoveryRecord::nothing_to_undo() const {
    return breakpoint_count == 0 && thread_phase == ThreadPhase::kNone &&
           shadow_phase == ShadowPhase::kNone;
}

RecoveryLog::RecoveryLog() = default;

RecoveryLog::~RecoveryLog() {
    if (map_ != nullptr) ::munmap(map_, map_size_);
    if (fd_ >= 0) ::close(fd_);
}

ErrorOr<std::unique_ptr<RecoveryLog>> RecoveryLog::open_file(const std::string& path, bool keep) {
    std::optional<RecoveryRecord> previous;
    if (keep) {
        if (auto r = read_file(path)) previous = *r;
    }
    UniqueFd fd = TRY(open_private_file(path, O_RDWR | O_CREAT));
    if (::ftruncate(fd.get(), sizeof(LogFile)) < 0) return errno_error("sizing " + path);
    void* map = ::mmap(nullptr, sizeof(LogFile), PROT_READ | PROT_WRITE, MAP_SHARED, fd.get(), 0);
    if (map == MAP_FAILED) return errno_error("mapping " + path);
    auto log = std::unique_ptr<RecoveryLog>(new RecoveryLog());
    log->path_ = path;
    log->map_ = map;
    log->map_size_ = sizeof(LogFile);
    log->fd_ = fd.release();
    auto* file = static_cast<LogFile*>(map);
    file->magic = kFileMagic;
    if (previous) log->working_ = *previous;
    log->commit();
    return log;
}

void RecoveryLog::commit() {
    if (map_ == nullptr) return;
    auto* file = static_cast<LogFile*>(map_);
    working_.clean = working_.nothing_to_undo() && working_.connect_pause == 0 ? 1 : 0;
    uint64_t seq = __atomic_load_n(&file->sequence, __ATOMIC_RELAXED);
    std::memcpy(&file->slots[(seq + 1) & 1], &working_, sizeof working_);
    // The slot is complete before the sequence names it: a reader after our death sees
    // either the previous record or this one, never a mix.
    __atomic_store_n(&file->sequence, seq + 1, __ATOMIC_RELEASE);
}

ErrorOr<RecoveryRecord> RecoveryLog::read_file(const std::string& path) {
    // A record read from a file someone else could have written would be obeyed: it names
    // registers and addresses to restore.
    UniqueFd fd = TRY(open_private_file(path, O_RDONLY));
    std::vector<uint8_t> bytes(sizeof(LogFile));
    ssize_t n = ::pread(fd.get(), bytes.data(), bytes.size(), 0);
    bytes.resize(n > 0 ? static_cast<size_t>(n) : 0);
    return parse(bytes, path);
}

ErrorOr<RecoveryRecord> RecoveryLog::parse(std::span<const uint8_t> bytes,
                                           const std::string& origin) {
    LogFile file;
    if (bytes.size() < sizeof file) {
        return make_error(EINVAL, "recovery log " + origin + " is truncated");
    }
    std::memcpy(&file, bytes.data(), sizeof file);
    if (file.magic != kFileMagic) return make_error(EINVAL, origin + " is not a recovery log");
    RecoveryRecord r = file.slots[file.sequence & 1];
    if (r.magic != RecoveryRecord::kMagic || r.version != RecoveryRecord::kVersion) {
        return make_error(EINVAL, "recovery log " + origin + " has an unknown format");
    }
    r.endpoint[sizeof r.endpoint - 1] = '\0';
    if (r.breakpoint_count > RecoveryRecord::kMaxBreakpoints) r.breakpoint_count = 0;
    r.connect_pause = r.connect_pause != 0 ? 1 : 0;
    return r;
}

}  // namespace cloudvmi
