#include "fs/node.h"

#include <ctime>

namespace cloudvmi::fs {

namespace {
// The mount's own directories show the time the mount started.
const time_t kMountTime = ::time(nullptr);
}  // namespace

struct stat synthetic_stat(mode_t mode, off_t size) {
    struct stat st {};
    st.st_mode = mode;
    st.st_nlink = S_ISDIR(mode) ? 2 : 1;
    st.st_uid = 0;
    st.st_gid = 0;
    st.st_size = size;
    st.st_blksize = 4096;
    st.st_atim.tv_sec = st.st_mtim.tv_sec = st.st_ctim.tv_sec = kMountTime;
    return st;
}

std::optional<std::string> moved_path(const std::string& key, const std::string& prefix,
                                      const std::string& from, const std::string& to) {
    bool below = key.size() > from.size() && key.starts_with(from) && key[from.size()] == '/';
    if ((key != from && !below) || !to.starts_with(prefix)) return std::nullopt;
    return to.substr(prefix.size()) + key.substr(from.size());
}

}  // namespace cloudvmi::fs
