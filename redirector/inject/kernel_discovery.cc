#include "redirector/inject/kernel_discovery.h"

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
// Bytes read on either side of a scanned page, so that an entry straddling a page boundary
// (an ENDBR64 at the end of one page, the store at the start of the next) is still seen.
constexpr size_t kScanMargin = 16;
// At most this many swapgs sites are named in a report.
constexpr size_t kMaxReportedSites = 16;

const uint8_t kSwapgs[] = {0x0f, 0x01, 0xf8};
const uint8_t kEndbr64[] = {0xf3, 0x0f, 0x1e, 0xfa};
const uint8_t kSysretq[] = {0x48, 0x0f, 0x07};
const uint8_t kIretq[] = {0x48, 0xcf};
const uint8_t kMovToCr3Rsp[] = {0x0f, 0x22, 0xdc};  // mov %rsp,%cr3 (SWITCH_TO_KERNEL_CR3)

template <size_t N>
bool bytes_at(std::span<const uint8_t> hay, size_t at, const uint8_t (&needle)[N]) {
    return at + N <= hay.size() && std::memcmp(hay.data() + at, needle, N) == 0;
}

template <size_t N>
std::optional<size_t> find_bytes(std::span<const uint8_t> hay, const uint8_t (&needle)[N],
                                 size_t from = 0) {
    if (hay.size() < N) return std::nullopt;
    for (size_t i = from; i + N <= hay.size(); ++i) {
        if (std::memcmp(hay.data() + i, needle, N) == 0) return i;
    }
    return std::nullopt;
}

// Bytes of a ModRM operand (ModRM, SIB, displacement) starting at code[at], or 0 if the
// encoding runs past the end of the code.
size_t modrm_operand_length(std::span<const uint8_t> code, size_t at) {
    if (at >= code.size()) return 0;
    uint8_t modrm = code[at];
    uint8_t mod = modrm >> 6, rm = modrm & 7;
    size_t len = 1;
    if (mod == 3) return len;
    if (rm == 4) {
        if (at + 1 >= code.size()) return 0;
        ++len;
        if (mod == 0 && (code[at + 1] & 7) == 5) len += 4;  // SIB with no base: disp32
    } else if (mod == 0 && rm == 5) {
        len += 4;  // RIP-relative disp32
    }
    if (mod == 1) len += 1;
    if (mod == 2) len += 4;
    return at + len <= code.size() ? len : 0;
}

bool is_segment_prefix(uint8_t b) {
    return b == 0x26 || b == 0x2e || b == 0x36 || b == 0x3e || b == 0x64 || b == 0x65;
}

std::string hex_bytes(std::span<const uint8_t> bytes) {
    std::string out;
    for (size_t i = 0; i < bytes.size(); ++i) {
        if (i) out += ' ';
        out += strformat("%02x", bytes[i]);
    }
    return out;
}

void log_dump(const std::string& what, uint64_t address, std::span<const uint8_t> bytes,
              size_t max_bytes = kEntryCodeWindow) {
    LOG_WARN("kernel discovery: %s, %zu bytes at %s%s:", what.c_str(),
             std::min(bytes.size(), max_bytes), hex_u64(address).c_str(),
             bytes.size() > max_bytes ? strformat(" (of %zu)", bytes.size()).c_str() : "");
    for (const auto& line : hex_dump_lines(address, bytes, max_bytes))
        LOG_WARN("  %s", line.c_str());
}

std::string describe_candidate(uint64_t address, const SyscallEntryCandidate& c) {
    return strformat("%s (%sswapgs; mov %%rsp,%%gs:%s)", hex_u64(address).c_str(),
                     c.endbr ? "endbr64; " : "", c.rip_relative ? "rel32(%rip)" : "abs32");
}

}  // namespace

std::string KernelEntryPoints::describe() const {
    return strformat(
        "syscall entry %s (%sswapgs; mov %%rsp,%%gs:%s), sysret %s (%s), slow return %s, "
        "iret %s, pti %s",
        hex_u64(syscall_entry).c_str(), endbr ? "endbr64; " : "",
        rip_relative ? "rel32(%rip)" : "abs32", hex_u64(sysret).c_str(),
        verw ? "swapgs; verw; sysretq" : "swapgs; sysretq",
        slow_return ? hex_u64(slow_return).c_str() : "not found",
        iret ? hex_u64(iret).c_str() : "not found", pti ? "on" : "off");
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

std::optional<PercpuRspStore> decode_percpu_rsp_store(std::span<const uint8_t> code, size_t at) {
    size_t i = at;
    bool gs = false;
    // Segment prefixes only: an operand-size, address-size or lock prefix would make it
    // another instruction.
    while (i < code.size() && i - at < 4 && is_segment_prefix(code[i])) {
        gs = code[i] == 0x65;  // the last segment override is the one that counts
        ++i;
    }
    if (!gs || i + 3 > code.size()) return std::nullopt;
    // REX.W, and REX.R clear: the source register is %rsp, not %r12.
    uint8_t rex = code[i];
    if ((rex & 0xfc) != 0x48) return std::nullopt;
    if (code[i + 1] != 0x89) return std::nullopt;  // mov r64 -> r/m64
    uint8_t modrm = code[i + 2];
    uint8_t mod = modrm >> 6, reg = (modrm >> 3) & 7, rm = modrm & 7;
    if (mod != 0 || reg != 4) return std::nullopt;
    PercpuRspStore store;
    size_t end;
    if (rm == 5) {
        store.rip_relative = true;  // %gs:rel32(%rip)
        end = i + 3 + 4;
    } else if (rm == 4) {
        // SIB with no base and no index (REX.X clear): %gs:abs32
        if (i + 4 > code.size()) return std::nullopt;
        uint8_t sib = code[i + 3];
        if ((sib & 7) != 5 || ((sib >> 3) & 7) != 4 || (rex & 0x02) != 0) return std::nullopt;
        end = i + 4 + 4;
    } else {
        return std::nullopt;  // a base register: not a per-CPU slot
    }
    if (end > code.size()) return std::nullopt;
    store.length = end - at;
    return store;
}

size_t filler_length(std::span<const uint8_t> code, size_t at) {
    size_t i = at;
    while (i < code.size() && i - at < 8 && (code[i] == 0x66 || code[i] == 0x2e || code[i] == 0x3e))
        ++i;
    if (i >= code.size()) return 0;
    if (code[i] == 0x90) return i + 1 - at;  // nop, xchg %ax,%ax
    if (code[i] == 0x0f && i + 2 < code.size() && code[i + 1] == 0x1f &&
        ((code[i + 2] >> 3) & 7) == 0) {
        size_t len = modrm_operand_length(code, i + 2);  // nopl/nopw with any operand
        return len ? i + 2 + len - at : 0;
    }
    return 0;
}

size_t verw_length(std::span<const uint8_t> code, size_t at) {
    size_t i = at;
    while (i < code.size() && i - at < 2 && is_segment_prefix(code[i]))
        ++i;
    if (i + 2 >= code.size() || code[i] != 0x0f || code[i + 1] != 0x00 ||
        ((code[i + 2] >> 3) & 7) != 5) {
        return 0;
    }
    size_t len = modrm_operand_length(code, i + 2);
    return len ? i + 2 + len - at : 0;
}

std::vector<SyscallEntryCandidate> find_syscall_entry_candidates(std::span<const uint8_t> code) {
    std::vector<SyscallEntryCandidate> found;
    for (size_t i = 0; i + sizeof kSwapgs <= code.size(); ++i) {
        if (!bytes_at(code, i, kSwapgs)) continue;
        auto store = decode_percpu_rsp_store(code, i + sizeof kSwapgs);
        if (!store) continue;
        SyscallEntryCandidate c;
        c.swapgs = i;
        c.entry = i;
        c.after_store = i + sizeof kSwapgs + store->length;
        c.rip_relative = store->rip_relative;
        // With IBT the entry point is the ENDBR64 right before the swapgs.
        if (i >= sizeof kEndbr64 && bytes_at(code, i - sizeof kEndbr64, kEndbr64)) {
            c.entry = i - sizeof kEndbr64;
            c.endbr = true;
        }
        found.push_back(c);
    }
    return found;
}

std::optional<size_t> find_syscall_entry_pattern(std::span<const uint8_t> code) {
    auto all = find_syscall_entry_candidates(code);
    if (all.empty()) return std::nullopt;
    return all.front().entry;
}

bool detect_pti(std::span<const uint8_t> entry_code, size_t after_store) {
    if (after_store >= entry_code.size()) return false;
    // Right after the store comes SWITCH_TO_KERNEL_CR3. Without PTI the kernel leaves a jump
    // over it in place; with PTI that jump is patched into a nop and the CR3 write runs.
    auto window =
        entry_code.subspan(after_store, std::min<size_t>(0x30, entry_code.size() - after_store));
    auto cr3 = find_bytes(window, kMovToCr3Rsp);
    if (!cr3) return false;
    int64_t target = -1;
    if (window[0] == 0xeb && window.size() >= 2) {
        target = 2 + static_cast<int8_t>(window[1]);
    } else if (window[0] == 0xe9 && window.size() >= 5) {
        int32_t rel;
        std::memcpy(&rel, window.data() + 1, 4);
        target = 5 + static_cast<int64_t>(rel);
    }
    bool jumps_over = target > static_cast<int64_t>(*cr3);
    return !jumps_over;
}

std::optional<ReturnPaths> find_return_paths(std::span<const uint8_t> entry_code,
                                             uint64_t entry_address) {
    ReturnPaths paths;
    // The fast return: a swapgs, then only fillers, verw or a short jump over it (6.1 without
    // PTI), then sysretq.
    std::optional<size_t> sysret;
    for (size_t s = 0; !sysret && s + sizeof kSwapgs <= entry_code.size(); ++s) {
        if (!bytes_at(entry_code, s, kSwapgs)) continue;
        size_t i = s + sizeof kSwapgs;
        bool verw = false;
        for (int steps = 0; steps < 8 && i < entry_code.size(); ++steps) {
            if (size_t n = filler_length(entry_code, i)) {
                i += n;
            } else if (size_t v = verw_length(entry_code, i)) {
                i += v;
                verw = true;
            } else if (entry_code[i] == 0xeb && i + 1 < entry_code.size() &&
                       entry_code[i + 1] <= 0x10) {
                i += 2 + entry_code[i + 1];  // an alternative not patched in: jmp over a verw
            } else {
                break;
            }
        }
        if (bytes_at(entry_code, i, kSysretq)) {
            sysret = i;
            paths.verw = verw;
            paths.sysret_by_structure = true;
        }
    }
    if (!sysret) sysret = find_bytes(entry_code, kSysretq);
    if (!sysret) return std::nullopt;
    paths.sysret = entry_address + *sysret;

    auto prologue = find_syscall_entry_candidates(entry_code.first(
        std::min<size_t>(entry_code.size(), sizeof kEndbr64 + sizeof kSwapgs + 16)));
    if (!prologue.empty() && prologue.front().entry == 0) {
        paths.pti = detect_pti(entry_code, prologue.front().after_store);
    }

    // The sysret eligibility checks (in C since 5.x: one test of its result) bail out to
    // the slow path with jcc rel32; the target most jumped to that lies outside the code
    // between the entry and the sysretq, in the same .entry.text, is taken.
    std::map<uint64_t, int> targets;
    for (size_t i = 0; i + 6 <= *sysret; ++i) {
        if (entry_code[i] == 0x0f && (entry_code[i + 1] & 0xf0) == 0x80) {
            int32_t rel;
            std::memcpy(&rel, entry_code.data() + i + 2, 4);
            int64_t offset = static_cast<int64_t>(i) + 6 + rel;
            if (offset > static_cast<int64_t>(*sysret) || offset < 0) {
                if (offset < -0x10000 || offset > 0x10000) continue;  // not in .entry.text
                targets[entry_address + static_cast<uint64_t>(offset)]++;
            }
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

std::vector<std::string> hex_dump_lines(uint64_t address, std::span<const uint8_t> bytes,
                                        size_t max_bytes) {
    std::vector<std::string> lines;
    size_t n = std::min(bytes.size(), max_bytes);
    for (size_t off = 0; off < n; off += 32) {
        lines.push_back(hex_u64(address + off) + ": " +
                        hex_bytes(bytes.subspan(off, std::min<size_t>(32, n - off))));
    }
    return lines;
}

ErrorOr<KernelEntryPoints> discover_kernel_entry_points(GuestAccess& guest, VcpuId vcpu) {
    const std::string kNotRecognised = "guest kernel not recognised: ";
    KernelEntryPoints kep;
    kep.idt_base = kLinuxIdtAddress;

    // Step 1: the IDT's exception gates point into .entry.text.
    std::vector<uint8_t> idt(32 * 16);
    if (auto r = guest.read_virtual(vcpu, kLinuxIdtAddress, idt); !r) {
        return make_error(ENOTSUP, kNotRecognised + "step 1 (IDT): nothing readable at " +
                                       hex_u64(kLinuxIdtAddress) + " (" + r.error().describe() +
                                       "); is this an x86-64 Linux >= 4.15 guest?");
    }
    auto handlers = parse_idt_handlers(idt);
    if (handlers.size() < 16) {
        log_dump("the IDT", kLinuxIdtAddress, idt);
        return make_error(
            ENOTSUP,
            kNotRecognised + strformat("step 1 (IDT): only %zu of 32 exception gates at %s are "
                                       "valid kernel gates (the IDT's bytes are in the log)",
                                       handlers.size(), hex_u64(kLinuxIdtAddress).c_str()));
    }
    uint64_t lowest = *std::min_element(handlers.begin(), handlers.end());
    uint64_t center = lowest & ~uint64_t{kPage - 1};

    // Step 2: around the handlers, the place that does `swapgs; mov %rsp,%gs:slot`;
    // step 3: it must reach a `swapgs; [verw;] sysretq` soon after.
    struct Site {
        uint64_t address;            // of bytes[0]
        size_t swapgs;               // offset of the swapgs in bytes
        std::vector<uint8_t> bytes;  // up to 8 before the swapgs, 24 from it
    };
    std::vector<Site> swapgs_sites;
    size_t swapgs_seen = 0;
    int readable = 0, unreadable = 0;
    std::vector<std::string> rejected;
    struct Accepted {
        uint64_t entry;
        SyscallEntryCandidate candidate;
        ReturnPaths paths;
        std::vector<uint8_t> code;
    };
    std::optional<Accepted> accepted, by_bytes_only;
    std::optional<std::pair<uint64_t, std::vector<uint8_t>>> first_rejected_code;

    std::vector<uint8_t> buf(kPage + 2 * kScanMargin), margin(kScanMargin);
    for (int64_t dist = 0; dist <= kEntryScanRadius && !accepted; dist += kPage) {
        for (int64_t sign : {-1, 1}) {
            if (dist == 0 && sign == 1) continue;
            uint64_t page = center + static_cast<uint64_t>(sign * dist);
            // The page, with the bytes on each side of it when they are mapped (with PTI only
            // the entry text is mapped in user page tables).
            if (!guest.read_virtual(vcpu, page,
                                    std::span<uint8_t>(buf).subspan(kScanMargin, kPage))) {
                ++unreadable;
                continue;
            }
            ++readable;
            size_t start = kScanMargin, end = kScanMargin + kPage;  // of the view in buf
            if (guest.read_virtual(vcpu, page - kScanMargin, margin)) {
                std::copy(margin.begin(), margin.end(), buf.begin());
                start = 0;
            }
            if (guest.read_virtual(vcpu, page + kPage, margin)) {
                std::copy(margin.begin(), margin.end(), buf.begin() + kScanMargin + kPage);
                end += kScanMargin;
            }
            auto view = std::span<const uint8_t>(buf).subspan(start, end - start);
            uint64_t base = page - (kScanMargin - start);      // address of view[0]
            size_t lo = kScanMargin - start, hi = lo + kPage;  // the page itself in the view
            for (size_t i = lo; i < hi; ++i) {
                if (!bytes_at(view, i, kSwapgs)) continue;
                ++swapgs_seen;
                if (swapgs_sites.size() < kMaxReportedSites) {
                    size_t from = i >= 8 ? i - 8 : 0;
                    auto ctx = view.subspan(from, std::min<size_t>(32, view.size() - from));
                    swapgs_sites.push_back({base + from, i - from, {ctx.begin(), ctx.end()}});
                }
            }
            for (const auto& c : find_syscall_entry_candidates(view)) {
                if (c.swapgs < lo || c.swapgs >= hi) continue;
                uint64_t entry = base + c.entry;
                std::vector<uint8_t> code(kEntryCodeWindow);
                if (!guest.read_virtual(vcpu, entry, code)) {
                    // The window runs into an unmapped page: what is left of this one.
                    code.resize(kPage - (entry & (kPage - 1)) + (c.entry < lo ? kPage : 0));
                    if (!guest.read_virtual(vcpu, entry, code)) {
                        rejected.push_back(describe_candidate(entry, c) +
                                           ": its code cannot be read");
                        continue;
                    }
                }
                auto paths = find_return_paths(code, entry);
                if (paths && paths->sysret_by_structure) {
                    accepted = Accepted{entry, c, *paths, std::move(code)};
                    break;
                }
                if (paths && !by_bytes_only) {
                    by_bytes_only = Accepted{entry, c, *paths, code};
                }
                rejected.push_back(describe_candidate(entry, c) +
                                   (paths
                                        ? ": the first 48 0f 07 after it (" +
                                              hex_u64(paths->sysret) + ") does not follow a swapgs"
                                        : strformat(": no sysretq within %zu bytes", code.size())));
                if (!first_rejected_code) first_rejected_code.emplace(entry, std::move(code));
            }
            if (accepted) break;
        }
    }

    if (!accepted && by_bytes_only) {
        LOG_WARN(
            "kernel discovery: no `swapgs; [verw;] sysretq` after the syscall entry at %s; "
            "using the first sysretq bytes after it (%s), to be proven by the injector",
            hex_u64(by_bytes_only->entry).c_str(), hex_u64(by_bytes_only->paths.sysret).c_str());
        log_dump("the syscall entry code", by_bytes_only->entry, by_bytes_only->code);
        accepted = std::move(by_bytes_only);
    }
    if (!accepted) {
        std::string where = strformat(
            "within %lld KiB of the exception handlers at %s (%d pages "
            "read, %d unreadable)",
            static_cast<long long>(kEntryScanRadius / 1024), hex_u64(lowest).c_str(), readable,
            unreadable);
        log_dump("the IDT", kLinuxIdtAddress, idt);
        for (const auto& site : swapgs_sites)
            log_dump("a swapgs and what follows", site.address, site.bytes);
        if (rejected.empty()) {
            std::string seen = "no swapgs at all";
            if (swapgs_seen != 0) {
                // Name the site most like an entry: a %gs access right after the swapgs,
                // else an ENDBR64 before it, else the first one seen.
                auto gs_after = [](const Site& site) {
                    return site.swapgs + 3 < site.bytes.size() &&
                           site.bytes[site.swapgs + 3] == 0x65;
                };
                auto endbr_before = [](const Site& site) {
                    return site.swapgs >= sizeof kEndbr64 &&
                           bytes_at(std::span<const uint8_t>(site.bytes),
                                    site.swapgs - sizeof kEndbr64, kEndbr64);
                };
                auto it = std::find_if(swapgs_sites.begin(), swapgs_sites.end(), gs_after);
                if (it == swapgs_sites.end())
                    it = std::find_if(swapgs_sites.begin(), swapgs_sites.end(), endbr_before);
                const Site& site = it != swapgs_sites.end() ? *it : swapgs_sites.front();
                auto after = std::span<const uint8_t>(site.bytes).subspan(site.swapgs);
                seen = strformat(
                    "%zu swapgs, none followed by a store of %%rsp to a %%gs slot (%s at %s: "
                    "%s)",
                    swapgs_seen, it != swapgs_sites.end() ? "the most entry-like" : "the first",
                    hex_u64(site.address + site.swapgs).c_str(),
                    hex_bytes(after.first(std::min<size_t>(12, after.size()))).c_str());
            }
            return make_error(ENOTSUP, kNotRecognised +
                                           "step 2 (syscall entry): no entry_SYSCALL_64 "
                                           "(swapgs; mov %rsp,%gs:slot) " +
                                           where + ": " + seen + " (the bytes are in the log)");
        }
        if (first_rejected_code) {
            log_dump("the first candidate's code", first_rejected_code->first,
                     first_rejected_code->second);
        }
        std::string list;
        for (size_t i = 0; i < rejected.size() && i < 4; ++i)
            list += (i ? "; " : "") + rejected[i];
        return make_error(ENOTSUP, kNotRecognised +
                                       "step 3 (fast return): " + std::to_string(rejected.size()) +
                                       " entry candidate(s) " + where + ", none usable: " + list +
                                       " (the bytes are in the log)");
    }

    kep.syscall_entry = accepted->entry;
    kep.sysret = accepted->paths.sysret;
    kep.pti = accepted->paths.pti;
    kep.endbr = accepted->candidate.endbr;
    kep.rip_relative = accepted->candidate.rip_relative;
    kep.verw = accepted->paths.verw;

    // Steps 4-5 are informational: the injector uses neither the slow path nor its iretq.
    kep.slow_return = accepted->paths.slow_return;
    if (kep.slow_return != 0) {
        std::vector<uint8_t> slow(kSlowPathWindow);
        if (guest.read_virtual(vcpu, kep.slow_return, slow)) {
            if (auto off = find_iret(slow)) kep.iret = kep.slow_return + *off;
        }
    }
    if (kep.iret == 0) {
        LOG_INFO(
            "kernel discovery: no slow return path with an iretq found (informational: the "
            "injector does not use it)");
    }
    LOG_INFO("kernel discovery: %s", kep.describe().c_str());
    return kep;
}

}  // namespace cloudvmi
