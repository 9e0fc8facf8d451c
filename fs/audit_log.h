// The audit trail of changes: one JSON object per line, appended to a root-only file that
// is rotated by size, and copied to syslog (LOG_AUTHPRIV).
//
// A line written with `durable` is fsync'd before append() returns: the intent line of a
// change reaches the disk before the change reaches the guest, so a crash in between
// leaves the intent on record.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"
#include "common/unique_fd.h"

namespace cloudvmi::fs {

struct AuditOptions {
    std::string path;                // "" = no file (syslog only, if enabled)
    uint64_t max_bytes = 64u << 20;  // rotate when a line would pass this size
    int keep = 5;                    // rotated generations kept: path.1 .. path.N
    bool syslog = true;
};

class AuditLog {
  public:
    // Creates the file's directory (0700) if needed; refuses a path that is a symlink, not
    // a regular file or not owned by us, with a clear message.
    static ErrorOr<std::unique_ptr<AuditLog>> open(const AuditOptions& options);
    ~AuditLog();

    // Appends one line (a newline is added). Thread-safe.
    ErrorOr<void> append(const std::string& json_line, bool durable);

    const AuditOptions& options() const { return options_; }
    uint64_t lines_written() const;

  private:
    explicit AuditLog(AuditOptions options) : options_(std::move(options)) {}
    ErrorOr<void> open_file();
    ErrorOr<void> rotate();

    AuditOptions options_;
    mutable std::mutex mutex_;  // guards the file and the counters; a leaf lock
    UniqueFd fd_;
    uint64_t size_ = 0;
    uint64_t lines_ = 0;
};

}  // namespace cloudvmi::fs
