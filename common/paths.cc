#include "common/paths.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <fstream>

#include "common/strings.h"

namespace cloudvmi {

ErrorOr<void> make_dirs(const std::string& dir) {
    std::string partial;
    for (auto part : split(dir, '/')) {
        partial += std::string(part) + "/";
        if (part.empty()) continue;
        if (::mkdir(partial.c_str(), 0700) < 0 && errno != EEXIST) {
            return errno_error("creating " + partial);
        }
    }
    return {};
}

namespace {

// Every directory above `canonical` must be out of other users' reach: owned by root or
// us, and not writable by others unless sticky (/tmp), else the checked directory could be
// renamed away and replaced after the check.
ErrorOr<void> check_ancestors(const std::string& canonical, const char* what) {
    std::string at = canonical;
    while (true) {
        size_t slash = at.rfind('/');
        if (slash == std::string::npos) return {};
        at = slash == 0 ? "/" : at.substr(0, slash);
        struct stat st {};
        if (::lstat(at.c_str(), &st) < 0) return errno_error("checking " + at);
        bool trusted_owner = st.st_uid == 0 || st.st_uid == ::geteuid();
        bool open_to_others = (st.st_mode & 022) != 0 && (st.st_mode & S_ISVTX) == 0;
        if (!trusted_owner || open_to_others) {
            return make_error(EPERM, strformat("%s, above the %s %s, is open to "
                                               "other users (uid %u, mode %04o); refusing it",
                                               at.c_str(), what, canonical.c_str(),
                                               static_cast<unsigned>(st.st_uid),
                                               static_cast<unsigned>(st.st_mode & 07777)));
        }
        if (at == "/") return {};
    }
}

}  // namespace

ErrorOr<void> ensure_private_dir(const std::string& dir, const char* what) {
    TRY(make_dirs(dir));
    // "dir/" would make lstat follow a link named dir.
    std::string path = dir;
    while (path.size() > 1 && path.back() == '/')
        path.pop_back();
    struct stat st {};
    if (::lstat(path.c_str(), &st) < 0) return errno_error("checking " + path);
    if (S_ISLNK(st.st_mode)) {
        return make_error(EPERM, std::string(what) + " " + path +
                                     " is a symbolic link; refusing it (give the real path)");
    }
    if (!S_ISDIR(st.st_mode)) return make_error(ENOTDIR, std::string(what) + " " + path);
    if (st.st_uid != ::geteuid()) {
        return make_error(EPERM, strformat("%s %s belongs to uid %u, not to us "
                                           "(uid %u); refusing it",
                                           what, path.c_str(), static_cast<unsigned>(st.st_uid),
                                           static_cast<unsigned>(::geteuid())));
    }
    if ((st.st_mode & 077) != 0) {
        return make_error(
            EPERM,
            strformat("%s %s is open to other users (mode "
                      "%04o); refusing it (chmod 700 %s)",
                      what, path.c_str(), static_cast<unsigned>(st.st_mode & 07777), path.c_str()));
    }
    char canonical[PATH_MAX];
    if (::realpath(path.c_str(), canonical) == nullptr) return errno_error("resolving " + path);
    return check_ancestors(canonical, what);
}

ErrorOr<UniqueFd> open_private_file(const std::string& path, int flags) {
    // O_NONBLOCK: a fifo put there must not hang the open before it is refused below.
    UniqueFd fd(::open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY, 0600));
    if (!fd.valid()) {
        if (errno == ELOOP) {
            return make_error(EPERM, path + " is a symbolic link; refusing it (remove it)");
        }
        return errno_error("opening " + path);
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0) return errno_error("checking " + path);
    if (!S_ISREG(st.st_mode))
        return make_error(EPERM, path + " is not a regular file; refusing it");
    if (st.st_uid != ::geteuid()) {
        return make_error(EPERM, strformat("%s belongs to uid %u, not to us; refusing it",
                                           path.c_str(), static_cast<unsigned>(st.st_uid)));
    }
    if (st.st_nlink != 1) {
        return make_error(EPERM, path + " has other hard links; refusing it (remove it)");
    }
    return fd;
}

ErrorOr<void> write_all(int fd, std::span<const uint8_t> data, const char* what) {
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = ::write(fd, data.data() + done, data.size() - done);
        if (n < 0) {
            if (errno == EINTR) continue;
            return errno_error(what);
        }
        done += static_cast<size_t>(n);
    }
    return {};
}

std::string process_name(pid_t pid) {
    if (pid <= 0) return "";
    std::ifstream in("/proc/" + std::to_string(pid) + "/comm");
    std::string comm;
    std::getline(in, comm);
    return comm;
}

}  // namespace cloudvmi
