#include "redirector/guest/guest_ram.h"

#include <fcntl.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "common/log.h"
#include "common/random.h"
#include "common/strings.h"

namespace cloudvmi {

namespace {

constexpr uint64_t kMinRamSize = 16ULL << 20;

bool is_ram_backing(std::string_view name) {
    if (name.empty()) return true;  // anonymous: QEMU's default RAM
    if (name.starts_with("/memfd:")) return true;
    if (name.front() != '/') return false;  // [heap], [stack], [vdso]...
    // memory-backend-file: hugetlbfs or a plain file; never a library or the binary.
    return name.find(".so") == std::string_view::npos && !name.starts_with("/usr/") &&
           !name.starts_with("/lib");
}

ErrorOr<std::string> read_text_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return make_error(errno != 0 ? errno : EIO, "cannot read " + path);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

}  // namespace

std::vector<RamCandidate> ram_candidates(std::string_view maps_text, uint64_t min_size) {
    std::vector<RamCandidate> out;
    for (auto line : split(maps_text, '\n')) {
        // start-end perms offset dev inode [path]
        auto fields = split(line, ' ');
        std::vector<std::string_view> cols;
        for (auto f : fields)
            if (!f.empty()) cols.push_back(f);
        if (cols.size() < 5) continue;
        auto dash = cols[0].find('-');
        if (dash == std::string_view::npos) continue;
        auto start = parse_hex_u64(cols[0].substr(0, dash));
        auto end = parse_hex_u64(cols[0].substr(dash + 1));
        if (!start || !end || *end <= *start) continue;
        // Guest RAM is never executable in QEMU (its translated code is: "rwxp").
        if (cols[1].size() < 3 || cols[1][0] != 'r' || cols[1][1] != 'w' || cols[1][2] != '-') {
            continue;
        }
        std::string name;
        if (cols.size() >= 6) {
            auto at = line.find(cols[5]);
            name = std::string(line.substr(at));
        }
        if (!is_ram_backing(name)) continue;
        if (*end - *start < min_size) continue;
        out.push_back({*start, *end - *start, name});
    }
    return out;
}

ErrorOr<std::unique_ptr<GuestRam>> GuestRam::locate(pid_t qemu_pid, uint64_t probe_pa,
                                                    GuestPhysicalAccess& stub) {
    std::string proc = strformat("/proc/%d", static_cast<int>(qemu_pid));
    auto maps = TRY(read_text_file(proc + "/maps"));
    auto candidates = ram_candidates(maps, kMinRamSize);
    if (candidates.empty()) return make_error(ENOENT, "no mapping of QEMU's looks like guest RAM");
    UniqueFd mem(::open((proc + "/mem").c_str(), O_RDWR | O_CLOEXEC));
    if (!mem.valid()) return make_error(errno, "opening " + proc + "/mem");

    std::array<uint8_t, 16> original{}, cookie{};
    TRY(stub.read_physical(probe_pa, original));
    for (size_t i = 0; i < cookie.size(); i += 8) {
        uint64_t r = random_u64();
        std::memcpy(cookie.data() + i, &r, 8);
    }
    TRY(stub.write_physical(probe_pa, cookie));
    std::vector<const RamCandidate*> matches;
    for (const auto& c : candidates) {
        if (probe_pa + cookie.size() > c.size) continue;
        std::array<uint8_t, 16> seen{};
        auto n =
            ::pread(mem.get(), seen.data(), seen.size(), static_cast<off_t>(c.start + probe_pa));
        if (n == static_cast<ssize_t>(seen.size()) && seen == cookie) matches.push_back(&c);
    }
    auto restored = stub.write_physical(probe_pa, original);
    if (!restored) return std::unexpected(restored.error().with_context("putting back the probe"));
    if (matches.size() != 1) {
        return make_error(ENOENT, strformat("guest RAM not identified in QEMU's memory (%zu of "
                                            "%zu candidate mappings held the cookie)",
                                            matches.size(), candidates.size()));
    }
    uint64_t limit = std::min(matches[0]->size, kLinearRamLimit);
    LOG_INFO("guest RAM: QEMU pid %d maps it at %s (%llu MiB, %llu MiB reachable)",
             static_cast<int>(qemu_pid), hex_u64(matches[0]->start).c_str(),
             static_cast<unsigned long long>(matches[0]->size >> 20),
             static_cast<unsigned long long>(limit >> 20));
    return std::unique_ptr<GuestRam>(
        new GuestRam(qemu_pid, std::move(mem), matches[0]->start, limit));
}

ErrorOr<void> GuestRam::check_range(uint64_t pa, size_t len) const {
    if (pa >= limit_ || len > limit_ - pa) {
        return make_error(EFAULT, strformat("guest-physical %s+%zu is beyond the RAM reachable "
                                            "without a stop",
                                            hex_u64(pa).c_str(), len));
    }
    return {};
}

namespace {

// Whether `pid` still runs (a zombie has no memory left to read).
bool process_alive(pid_t pid) {
    auto stat = read_text_file(strformat("/proc/%d/stat", static_cast<int>(pid)));
    if (!stat) return false;
    auto paren = stat->rfind(')');
    if (paren == std::string::npos || paren + 2 >= stat->size()) return false;
    char state = (*stat)[paren + 2];
    return state != 'Z' && state != 'X';
}

// A failed transfer: a QEMU that exited makes /proc/PID/mem read as empty or fail.
Error transfer_error(pid_t pid, ssize_t n, const char* what) {
    int err = n < 0 ? errno : EIO;
    if (!process_alive(pid)) {
        return Error(ENOTCONN, strformat("QEMU (pid %d) has exited", static_cast<int>(pid)));
    }
    return Error(err, what);
}

}  // namespace

ErrorOr<void> GuestRam::transfer(uint64_t pa, size_t size, bool writing, uint8_t* in,
                                 const uint8_t* out) {
    TRY(check_range(pa, size));
    size_t done = 0;
    while (done < size) {
        auto at = static_cast<off_t>(host_base_ + pa + done);
        auto n = writing ? ::pwrite(mem_.get(), out + done, size - done, at)
                         : ::pread(mem_.get(), in + done, size - done, at);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            return std::unexpected(
                transfer_error(pid_, n, writing ? "writing guest RAM" : "reading guest RAM"));
        }
        done += static_cast<size_t>(n);
    }
    return {};
}

ErrorOr<void> GuestRam::read(uint64_t pa, std::span<uint8_t> out) {
    return transfer(pa, out.size(), false, out.data(), nullptr);
}

ErrorOr<void> GuestRam::write(uint64_t pa, std::span<const uint8_t> data) {
    return transfer(pa, data.size(), true, nullptr, data.data());
}

}  // namespace cloudvmi
