#include "redirector/kernel_discovery.h"

#include <algorithm>
#include <cstring>
#include <map>

#include "common/log.h"
#include "common/strings.h"

namespace cloudvmi {

namespace {

constexpr uint16_t kKernelCodeSelector = 0x10;
constexpr uint64_t kKernelSpaceStart = 0xffff800000000000ULL;
// How far from the exception handlers entry_SYSCALL_64 may sit (it shares .entry.text).
constexpr int64_t kEntryScanRadius = 0x20000;
constexpr size_t kPage = 4096;
// entry_SYSCALL_64 reaches its sysretq within a few hundred bytes on every 4.x-6.x kernel.
constexpr size_t kEntryCodeWindow = 0x600;
constexpr size_t kSlowPathWindow = 0x400;

const uint8_t kSwapgsMovRspGs[] = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89, 0x24, 0x25};
const uint8_t kEndbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};
const uint8_t kSysretq[] = {0x48, 0x0f, 0x07};
const uint8_t kIretq[] = {0x48, 0xcf};
const uint8_t kMovToCr3Rsp[] = {0x0f, 0x22, 0xdc};  // mov %rsp,%cr3 (SWITCH_TO_KERNEL_CR3)

template <size_t N>
std::optional<size_t> find_bytes(std::span<const uint8_t> hay, const uint8_t (&needle)[N],
                                 size_t from = 0) {
    if (hay.size() < N) return std::nullopt;
    for (size_t i = from; i + N <= hay.size(); ++i) {
        if (std::memcmp(hay.data() + i, needle, N) == 0) return i;
    }
    return std::nullopt;
}

}  // namespace

std::string KernelEntryPoints::describe() const {
    return strformat("syscall entry %s, sysret %s, slow return %s, iret %s, pti %s",
                     hex_u64(syscall_entry).c_str(), hex_u64(sysret).c_str(),
                     hex_u64(slow_return).c_str(), iret ? hex_u64(iret).c_str() : "not found",
                     pti ? "on" : "off");
}

std::vector<uint64_t> parse_idt_handlers(std::span<const uint8_t> idt) {
    std::vector<uint64_t> handlers;
    for (size_t off = 0; off + 16 <= idt.size(); off += 16) {
        const uint8_t* g = idt.data() + off;
        uint16_t lo, sel, mid;
        uint32_t hi;
        std::memcpy(&lo, g, 2);
        std::memcpy(&sel, g + 2, 2);
        uint8_t type_attr = g[5];
        std::memcpy(&mid, g + 6, 2);
        std::memcpy(&hi, g + 8, 4);
        bool present = type_attr & 0x80;
        uint8_t type = type_attr & 0x0f;
        if (!present || (type != 0xe && type != 0xf) || sel != kKernelCodeSelector) continue;
        uint64_t addr = uint64_t{lo} | uint64_t{mid} << 16 | uint64_t{hi} << 32;
        if (addr < kKernelSpaceStart) continue;
        handlers.push_back(addr);
    }
    return handlers;
}

std::optional<size_t> find_syscall_entry_pattern(std::span<const uint8_t> code) {
    auto at = find_bytes(code, kSwapgsMovRspGs);
    if (!at) return std::nullopt;
    // With IBT the entry point is the ENDBR64 right before the swapgs.
    if (*at >= 4 && std::memcmp(code.data() + *at - 4, kEndbr64, 4) == 0) return *at - 4;
    return at;
}

std::optional<ReturnPaths> find_return_paths(std::span<const uint8_t> entry_code,
                                             uint64_t entry_address) {
    auto sysret = find_bytes(entry_code, kSysretq);
    if (!sysret) return std::nullopt;
    ReturnPaths paths;
    paths.sysret = entry_address + *sysret;
    // Right after `swapgs; mov %rsp,%gs:X` comes SWITCH_TO_KERNEL_CR3. Without PTI the
    // kernel patches a short jump over it in its place; with PTI it stays and a
    // `mov %rsp,%cr3` follows within a few instructions.
    size_t after = (std::memcmp(entry_code.data(), kEndbr64, 4) == 0 ? 4 : 0) + 12;
    if (after + 2 <= entry_code.size()) {
        auto cr3 =
            find_bytes(entry_code.subspan(after, std::min<size_t>(0x30, entry_code.size() - after)),
                       kMovToCr3Rsp);
        int rel = static_cast<int8_t>(entry_code[after + 1]);
        bool jumps_over =
            entry_code[after] == 0xeb && rel > 0 && (!cr3 || static_cast<size_t>(rel) + 2 > *cr3);
        paths.pti = cr3.has_value() && !jumps_over;
    }
    // The sysret eligibility checks all bail out to the same slow path with jcc rel32.
    std::map<uint64_t, int> targets;
    for (size_t i = 0; i + 6 <= *sysret; ++i) {
        if (entry_code[i] == 0x0f && (entry_code[i + 1] & 0xf0) == 0x80) {
            int32_t rel;
            std::memcpy(&rel, entry_code.data() + i + 2, 4);
            uint64_t target = entry_address + i + 6 + static_cast<int64_t>(rel);
            if (target > entry_address + *sysret || target < entry_address) targets[target]++;
        }
    }
    int best = 0;
    for (const auto& [target, count] : targets) {
        if (count > best) {
            best = count;
            paths.slow_return = target;
        }
    }
    return paths;
}

std::optional<size_t> find_iret(std::span<const uint8_t> slow_path_code) {
    return find_bytes(slow_path_code, kIretq);
}

ErrorOr<KernelEntryPoints> discover_kernel_entry_points(GuestAccess& guest, VcpuId vcpu) {
    KernelEntryPoints kep;
    kep.idt_base = kLinuxIdtAddress;
    std::vector<uint8_t> idt(32 * 16);
    if (auto r = guest.read_virtual(vcpu, kLinuxIdtAddress, idt); !r) {
        return make_error(ENOTSUP, "guest kernel not recognised: no IDT readable at " +
                                       hex_u64(kLinuxIdtAddress) + " (" + r.error().describe() +
                                       "); is this an x86-64 Linux >= 4.15 guest?");
    }
    auto handlers = parse_idt_handlers(idt);
    if (handlers.size() < 16) {
        return make_error(ENOTSUP, strformat("guest kernel not recognised: only %zu valid "
                                             "exception gates in the IDT",
                                             handlers.size()));
    }
    uint64_t lowest = *std::min_element(handlers.begin(), handlers.end());
    uint64_t center = lowest & ~uint64_t{kPage - 1};

    // Scan outward from the handlers' page; pages that are not mapped are skipped.
    std::optional<uint64_t> entry;
    std::vector<uint8_t> page(kPage + sizeof kSwapgsMovRspGs);
    for (int64_t dist = 0; dist <= kEntryScanRadius && !entry; dist += kPage) {
        for (int64_t sign : {-1, 1}) {
            if (dist == 0 && sign == 1) continue;
            uint64_t addr = center + static_cast<uint64_t>(sign * dist);
            if (!guest.read_virtual(vcpu, addr, page)) continue;
            if (auto off = find_syscall_entry_pattern(page); off && *off < kPage) {
                entry = addr + *off;
                break;
            }
        }
    }
    if (!entry) {
        return make_error(ENOTSUP, strformat("guest kernel not recognised: no entry_SYSCALL_64 "
                                             "(swapgs; mov %%rsp,%%gs:...) within %lld KiB of the "
                                             "exception handlers at %s",
                                             static_cast<long long>(kEntryScanRadius / 1024),
                                             hex_u64(lowest).c_str()));
    }
    kep.syscall_entry = *entry;

    std::vector<uint8_t> code(kEntryCodeWindow);
    TRY_CTX(guest.read_virtual(vcpu, *entry, code), "reading the syscall entry code");
    auto paths = find_return_paths(code, *entry);
    if (!paths) {
        return make_error(ENOTSUP,
                          "guest kernel not recognised: no sysretq after the syscall "
                          "entry at " +
                              hex_u64(*entry));
    }
    kep.sysret = paths->sysret;
    kep.pti = paths->pti;
    kep.slow_return = paths->slow_return;
    if (kep.slow_return != 0) {
        std::vector<uint8_t> slow(kSlowPathWindow);
        if (guest.read_virtual(vcpu, kep.slow_return, slow)) {
            if (auto off = find_iret(slow)) kep.iret = kep.slow_return + *off;
        }
    }
    if (kep.iret == 0) {
        LOG_WARN(
            "no iretq found on the slow return path: signals that hit a hijacked thread "
            "cannot be repaired on this kernel");
    }
    LOG_INFO("kernel discovery: %s", kep.describe().c_str());
    return kep;
}

}  // namespace cloudvmi
