#include "fs/remote_attr.h"

#include <cmath>

#include "common/paths.h"

namespace cloudvmi::fs {

namespace {

using remote::Message;

// The kernel keeps what we say for at most this long; a remote cannot ask for more.
constexpr double kMaxCacheSeconds = 3600;
constexpr size_t kMaxGroups = 256;
constexpr size_t kMaxComm = 64;  // the kernel's are 15 bytes

bool known_file_type(mode_t mode) {
    switch (mode & S_IFMT) {
        case S_IFREG:
        case S_IFDIR:
        case S_IFLNK:
        case S_IFCHR:
        case S_IFBLK:
        case S_IFIFO:
        case S_IFSOCK:
            return true;
        default:
            return false;
    }
}

ErrorOr<double> cache_seconds(const Message& m, const char* name) {
    double v = TRY(remote::field_double(m, name));
    if (!std::isfinite(v) || v < 0 || v > kMaxCacheSeconds)
        return make_error(EPROTO, std::string("field '") + name + "' is out of range");
    return v;
}

ErrorOr<uint32_t> field_u32(const Message& m, const char* name) {
    uint64_t v = TRY(remote::field_u64(m, name));
    if (v > 0xffffffffu) return make_error(EPROTO, std::string("field '") + name + "' too large");
    return static_cast<uint32_t>(v);
}

}  // namespace

int64_t ns_of(const timespec& t) {
    return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

timespec timespec_of(int64_t ns) {
    timespec t{};
    t.tv_sec = ns / 1000000000;
    t.tv_nsec = ns % 1000000000;
    if (t.tv_nsec < 0) {
        t.tv_nsec += 1000000000;
        t.tv_sec -= 1;
    }
    return t;
}

std::string child_path(const std::string& dir, const std::string& name) {
    return dir.empty() ? name : dir + "/" + name;
}

Message encode_remote_attr(const NodeAttr& attr, const Node& node) {
    const struct stat& st = attr.st;
    Message m{{"mode", st.st_mode},
              {"size", static_cast<int64_t>(st.st_size)},
              {"nlink", static_cast<uint64_t>(st.st_nlink)},
              {"uid", st.st_uid},
              {"gid", st.st_gid},
              {"rdev", static_cast<uint64_t>(st.st_rdev)},
              {"atime", ns_of(st.st_atim)},
              {"mtime", ns_of(st.st_mtim)},
              {"ctime", ns_of(st.st_ctim)},
              {"attr_s", attr.timeout},
              {"entry_s", node.entry_timeout()}};
    if (node.exposure() == Exposure::kKernelAddresses) m["kaddr"] = true;
    return m;
}

ErrorOr<RemoteAttr> decode_remote_attr(const Message& m) {
    if (!m.is_object()) return make_error(EPROTO, "attributes are not a map");
    RemoteAttr r;
    struct stat& st = r.attr.st;
    st.st_mode = TRY(field_u32(m, "mode"));
    if (!known_file_type(st.st_mode)) return make_error(EPROTO, "attributes name no file type");
    int64_t size = TRY(remote::field_i64(m, "size"));
    if (size < 0) return make_error(EPROTO, "negative size");
    st.st_size = size;
    st.st_nlink = TRY(field_u32(m, "nlink"));
    st.st_uid = TRY(field_u32(m, "uid"));
    st.st_gid = TRY(field_u32(m, "gid"));
    st.st_rdev = TRY(remote::field_u64(m, "rdev"));
    st.st_atim = timespec_of(TRY(remote::field_i64(m, "atime")));
    st.st_mtim = timespec_of(TRY(remote::field_i64(m, "mtime")));
    st.st_ctim = timespec_of(TRY(remote::field_i64(m, "ctime")));
    st.st_blksize = 4096;
    st.st_blocks = (size + 511) / 512;
    r.attr.timeout = TRY(cache_seconds(m, "attr_s"));
    r.entry_timeout = TRY(cache_seconds(m, "entry_s"));
    if (remote::has_field(m, "kaddr") && TRY(remote::field_bool(m, "kaddr")))
        r.exposure = Exposure::kKernelAddresses;
    return r;
}

Message encode_caller(const Caller& who) {
    Message m{{"uid", who.uid}, {"gid", who.gid}, {"pid", who.pid}, {"groups", who.groups}};
    m["comm"] = who.comm.empty() ? process_name(who.pid) : who.comm;
    return m;
}

ErrorOr<Caller> decode_caller(const Message& m) {
    if (!m.is_object()) return make_error(EPROTO, "caller is not a map");
    Caller c;
    c.uid = TRY(field_u32(m, "uid"));
    c.gid = TRY(field_u32(m, "gid"));
    c.pid = static_cast<pid_t>(TRY(field_u32(m, "pid")));
    if (remote::has_field(m, "comm")) {
        c.comm = TRY(remote::field_string(m, "comm"));
        if (c.comm.size() > kMaxComm) c.comm.resize(kMaxComm);
    }
    if (remote::has_field(m, "groups")) {
        const auto& groups = m["groups"];
        if (!groups.is_array() || groups.size() > kMaxGroups)
            return make_error(EPROTO, "field 'groups' is not a short list");
        for (const auto& g : groups) {
            if (!g.is_number_unsigned() || g.get<uint64_t>() > 0xffffffffu)
                return make_error(EPROTO, "field 'groups' holds a non-group");
            c.groups.push_back(static_cast<gid_t>(g.get<uint64_t>()));
        }
    }
    return c;
}

}  // namespace cloudvmi::fs
