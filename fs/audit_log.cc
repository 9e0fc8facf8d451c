#include "fs/audit_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include <cstdio>

#include "common/paths.h"

namespace cloudvmi::fs {

namespace {

std::string parent_dir(const std::string& path) {
    size_t slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

ErrorOr<std::unique_ptr<AuditLog>> AuditLog::open(const AuditOptions& options) {
    std::unique_ptr<AuditLog> log(new AuditLog(options));
    if (!options.path.empty()) {
        if (options.path[0] != '/') return make_error(EINVAL, "audit_log must be an absolute path");
        TRY(ensure_private_dir(parent_dir(options.path), "audit log directory"));
        TRY(log->open_file());
    }
    if (options.syslog) ::openlog("cloudvmi", LOG_PID | LOG_NDELAY, LOG_AUTHPRIV);
    return log;
}

AuditLog::~AuditLog() {
    if (options_.syslog) ::closelog();
}

ErrorOr<void> AuditLog::open_file() {
    fd_ = TRY(open_private_file(options_.path, O_WRONLY | O_APPEND | O_CREAT));
    struct stat st {};
    if (::fstat(fd_.get(), &st) < 0) return errno_error("checking " + options_.path);
    size_ = static_cast<uint64_t>(st.st_size);
    return {};
}

ErrorOr<void> AuditLog::rotate() {
    // path.N-1 -> path.N ... path -> path.1; the oldest falls off the end.
    for (int i = options_.keep - 1; i >= 1; --i) {
        std::string from = options_.path + "." + std::to_string(i);
        std::string to = options_.path + "." + std::to_string(i + 1);
        if (::rename(from.c_str(), to.c_str()) < 0 && errno != ENOENT)
            return errno_error("rotating " + from);
    }
    if (options_.keep >= 1) {
        std::string first = options_.path + ".1";
        if (::rename(options_.path.c_str(), first.c_str()) < 0)
            return errno_error("rotating " + options_.path);
    } else if (::unlink(options_.path.c_str()) < 0) {
        return errno_error("rotating " + options_.path);
    }
    return open_file();
}

ErrorOr<void> AuditLog::append(const std::string& json_line, bool durable) {
    std::lock_guard lock(mutex_);
    if (options_.syslog) ::syslog(LOG_NOTICE, "%s", json_line.c_str());
    ++lines_;
    if (options_.path.empty()) return {};
    std::string line = json_line + "\n";
    if (size_ > 0 && size_ + line.size() > options_.max_bytes) TRY(rotate());
    TRY(write_all(fd_.get(), std::span(reinterpret_cast<const uint8_t*>(line.data()), line.size()),
                  "writing the audit log"));
    size_ += line.size();
    if (durable && ::fdatasync(fd_.get()) < 0) return errno_error("syncing the audit log");
    return {};
}

uint64_t AuditLog::lines_written() const {
    std::lock_guard lock(mutex_);
    return lines_;
}

}  // namespace cloudvmi::fs
