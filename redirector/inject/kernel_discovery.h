// Finds the guest kernel's 64-bit syscall entry and return-to-user instructions with no
// symbols and no per-kernel profile.
//
// MSR_LSTAR is not readable through QEMU's gdbstub, so the entry is found in the code, by
// structure rather than by one byte pattern (kernels keep changing the encodings):
//  1. the IDT (mapped at a fixed address in the cpu entry area) points into .entry.text;
//  2. entry_SYSCALL_64 is the place there that does `swapgs` and then stores the user %rsp
//     into a per-CPU slot: `mov %rsp,%gs:slot`, whatever the encoding of the slot (absolute
//     through a SIB byte on 5.10/6.1, RIP-relative on 6.12 and later, other prefixes
//     allowed), reached through an ENDBR64 on IBT builds;
//  3. its fast return is a `swapgs` followed, past nops and a `verw` (CPU buffer clearing),
//     by `sysretq`;
//  4. page-table isolation shows as the CR3 switch right after the store, executed (PTI) or
//     jumped over (no PTI);
//  5. the conditional jumps the entry makes out of itself lead to the slow return path,
//     whose `iretq` is the other way back to user mode. The injector no longer uses either:
//     they are reported, never required.
// Everything found here is only a candidate until the injector has seen it behave. When a
// kernel does not fit, the error says which step found what, and the bytes looked at go to
// the log (warn level, hex, bounded).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "redirector/guest/guest_access.h"

namespace cloudvmi {

struct KernelEntryPoints {
    uint64_t syscall_entry = 0;  // entry_SYSCALL_64, what MSR_LSTAR holds
    uint64_t sysret = 0;         // sysretq of the fast return path
    uint64_t slow_return = 0;    // swapgs_restore_regs_and_return_to_usermode (informational)
    uint64_t iret = 0;           // the iretq the slow path ends in (0 if not found; informational)
    uint64_t idt_base = 0;
    bool pti = false;           // entry switches CR3 (page-table isolation active)
    bool endbr = false;         // the entry begins with ENDBR64 (IBT build)
    bool rip_relative = false;  // the per-CPU slot is addressed RIP-relative (6.x+), not abs32
    bool verw = false;          // the fast return clears CPU buffers (verw) before sysretq

    std::string describe() const;
};

// The x86-64 IDT lives here on every Linux since 4.15 (CPU_ENTRY_AREA_RO_IDT).
constexpr uint64_t kLinuxIdtAddress = 0xfffffe0000000000ULL;
// How much code discovery reads from the syscall entry, and from the slow return path.
constexpr size_t kEntryCodeWindow = 0x600;
constexpr size_t kSlowPathWindow = 0x400;

// --- pure scanners over code bytes (unit-tested on recorded kernel text) ---

// Handler addresses of present 64-bit interrupt/trap gates with a kernel code selector.
std::vector<uint64_t> parse_idt_handlers(std::span<const uint8_t> idt);

// Length of `mov %rsp,%gs:slot` at code[at] (legacy prefixes including %gs, REX.W, 0x89,
// a ModRM with no base register: SIB disp32 or RIP-relative), or nullopt if it is not one.
struct PercpuRspStore {
    size_t length = 0;
    bool rip_relative = false;
};
std::optional<PercpuRspStore> decode_percpu_rsp_store(std::span<const uint8_t> code, size_t at);

// Length of a filler instruction at code[at] (nop, xchg %ax,%ax, nopl/nopw with any operand
// and prefixes), or 0.
size_t filler_length(std::span<const uint8_t> code, size_t at);
// Length of `verw mem16` / `verw r16` at code[at], or 0.
size_t verw_length(std::span<const uint8_t> code, size_t at);

// A place that looks like entry_SYSCALL_64: `[endbr64;] swapgs; mov %rsp,%gs:slot`.
struct SyscallEntryCandidate {
    size_t entry = 0;        // offset of the entry point (the ENDBR64 if there is one)
    size_t swapgs = 0;       // offset of the swapgs
    size_t after_store = 0;  // offset of the instruction after the store
    bool endbr = false;
    bool rip_relative = false;
};
// All of them in `code`, in address order.
std::vector<SyscallEntryCandidate> find_syscall_entry_candidates(std::span<const uint8_t> code);
// Offset of the first one's entry point, or nullopt.
std::optional<size_t> find_syscall_entry_pattern(std::span<const uint8_t> code);

// Page-table isolation, seen from the instruction after the entry's store: a CR3 write
// (`mov %rsp,%cr3`) within 0x30 bytes that is not jumped over.
bool detect_pti(std::span<const uint8_t> entry_code, size_t after_store);

struct ReturnPaths {
    uint64_t sysret = 0;
    uint64_t slow_return = 0;  // 0 if no conditional jump out was found
    bool pti = false;
    bool verw = false;                 // verw between the swapgs and the sysretq
    bool sysret_by_structure = false;  // false: only the bytes 48 0f 07 were found
};
// Given the code starting at the syscall entry, finds the fast sysretq (the first
// `swapgs; [nops|verw]...; sysretq`, else the first 48 0f 07), the slow path and PTI.
std::optional<ReturnPaths> find_return_paths(std::span<const uint8_t> entry_code,
                                             uint64_t entry_address);

// First iretq in the slow-path code, as an offset.
std::optional<size_t> find_iret(std::span<const uint8_t> slow_path_code);

// "addr: hex bytes" lines, 32 bytes each, at most max_bytes of them (for logs).
std::vector<std::string> hex_dump_lines(uint64_t address, std::span<const uint8_t> bytes,
                                        size_t max_bytes = 0x600);

// --- discovery against a live guest (guest stopped) ---
ErrorOr<KernelEntryPoints> discover_kernel_entry_points(GuestAccess& guest, VcpuId vcpu);

}  // namespace cloudvmi
