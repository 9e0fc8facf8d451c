#include "common/paths.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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

ErrorOr<void> ensure_private_dir(const std::string& dir) {
    TRY(make_dirs(dir));
    struct stat st {};
    if (::lstat(dir.c_str(), &st) < 0) return errno_error("checking " + dir);
    if (S_ISLNK(st.st_mode)) {
        return make_error(EPERM, "state directory " + dir +
                                     " is a symbolic link; refusing it (give the real path)");
    }
    if (!S_ISDIR(st.st_mode)) return make_error(ENOTDIR, "state directory " + dir);
    if (st.st_uid != ::geteuid()) {
        return make_error(EPERM, strformat("state directory %s belongs to uid %u, not to us "
                                           "(uid %u); refusing it",
                                           dir.c_str(), static_cast<unsigned>(st.st_uid),
                                           static_cast<unsigned>(::geteuid())));
    }
    if ((st.st_mode & 077) != 0) {
        return make_error(
            EPERM, strformat("state directory %s is open to other users (mode "
                             "%04o); refusing it (chmod 700 %s)",
                             dir.c_str(), static_cast<unsigned>(st.st_mode & 07777), dir.c_str()));
    }
    return {};
}

ErrorOr<UniqueFd> open_private_file(const std::string& path, int flags) {
    UniqueFd fd(::open(path.c_str(), flags | O_NOFOLLOW | O_CLOEXEC, 0600));
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

}  // namespace cloudvmi
