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

}  // namespace cloudvmi::fs
