#include "apps/vm_tree.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>

#include "common/strings.h"
#include "common/unique_fd.h"

namespace cloudvmi::apps {
namespace {

Error file_error(const std::string& what, const std::string& path) {
    return Error(errno, what + " " + path);
}

}  // namespace

std::string default_mount() {
    const char* env = std::getenv("CLOUDVMI_MOUNT");
    return env && *env ? env : "/vmi";
}

bool vm_selected(const VmRef& vm, const std::vector<std::string>& patterns) {
    if (patterns.empty()) return true;
    return std::any_of(patterns.begin(), patterns.end(), [&](const std::string& p) {
        const std::string& subject = p.find('/') != std::string::npos ? vm.id() : vm.name;
        return ::fnmatch(p.c_str(), subject.c_str(), 0) == 0;
    });
}

ErrorOr<std::vector<VmRef>> list_vms(const std::string& mount,
                                     const std::vector<std::string>& patterns) {
    struct stat st {};
    if (::stat((mount + "/.cloudvmi").c_str(), &st) != 0) {
        return make_error(ENOTCONN, mount + " is not a cloudvmi mount (no .cloudvmi/ in it)");
    }
    std::vector<VmRef> vms;
    for (const auto& node : TRY(list_dir(mount))) {
        if (node.starts_with(".")) continue;
        // An away node lists only its .cloudvmi: that is no error for a sweep.
        auto names = list_dir(mount + "/" + node);
        if (!names) continue;
        for (const auto& name : *names) {
            if (name.starts_with(".")) continue;
            VmRef vm{node, name, mount + "/" + node + "/" + name};
            if (vm_selected(vm, patterns)) vms.push_back(std::move(vm));
        }
    }
    std::sort(vms.begin(), vms.end(), [](const VmRef& a, const VmRef& b) {
        return std::tie(a.node, a.name) < std::tie(b.node, b.name);
    });
    return vms;
}

namespace {

// Reads until the end or until more than `cap` bytes came; `*more` says which.
ErrorOr<std::string> read_bounded(const std::string& path, size_t cap, bool* more) {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd.valid()) return std::unexpected(file_error("cannot open", path));
    std::string data;
    char buffer[65536];
    *more = false;
    while (true) {
        ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return std::unexpected(file_error("cannot read", path));
        if (n == 0) return data;
        size_t room = cap - data.size();
        data.append(buffer, std::min(room, static_cast<size_t>(n)));
        if (static_cast<size_t>(n) > room) {
            *more = true;
            return data;
        }
    }
}

}  // namespace

ErrorOr<std::string> read_file(const std::string& path, size_t cap) {
    bool more = false;
    auto data = TRY(read_bounded(path, cap, &more));
    if (more) return make_error(EFBIG, path + " is larger than " + std::to_string(cap) + " bytes");
    return data;
}

ErrorOr<std::string> read_prefix(const std::string& path, size_t cap) {
    bool more = false;
    return read_bounded(path, cap, &more);
}

bool valid_guest_path(std::string_view path) {
    if (path.size() < 2 || path[0] != '/' || path.size() > 4095) return false;
    for (auto part : split(path.substr(1), '/')) {
        if (part.empty() || part == "." || part == "..") return false;
    }
    return true;
}

ErrorOr<void> write_file(const std::string& path, std::string_view data,
                         std::optional<mode_t> create_mode) {
    int flags = O_WRONLY | O_TRUNC | O_CLOEXEC | (create_mode ? O_CREAT : 0);
    UniqueFd fd(::open(path.c_str(), flags, create_mode.value_or(0)));
    if (!fd.valid()) return std::unexpected(file_error("cannot open", path));
    ssize_t n = ::write(fd.get(), data.data(), data.size());
    if (n < 0) return std::unexpected(file_error("cannot write", path));
    if (static_cast<size_t>(n) != data.size()) {
        return make_error(EIO, "short write to " + path);
    }
    if (::close(fd.release()) != 0) return std::unexpected(file_error("cannot write", path));
    return {};
}

ErrorOr<std::vector<std::string>> list_dir(const std::string& path) {
    std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(path.c_str()), ::closedir);
    if (!dir) return std::unexpected(file_error("cannot list", path));
    std::vector<std::string> names;
    while (true) {
        errno = 0;
        dirent* entry = ::readdir(dir.get());
        if (!entry) break;
        std::string name = entry->d_name;
        if (name != "." && name != "..") names.push_back(std::move(name));
    }
    if (errno != 0) return std::unexpected(file_error("cannot list", path));
    return names;
}

ErrorOr<bool> exists(const std::string& path) {
    struct stat st {};
    if (::lstat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT) return false;
    return std::unexpected(file_error("cannot stat", path));
}

}  // namespace cloudvmi::apps
