// Finds the guest kernel's 64-bit syscall entry and return-to-user instructions with no
// symbols and no per-kernel profile.
//
// MSR_LSTAR is not readable through QEMU's gdbstub, so the entry is found in the code:
// the IDT (mapped at a fixed address in the cpu entry area) points into .entry.text, and
// entry_SYSCALL_64 is the one place there that does `swapgs; mov %rsp,%gs:...`. The first
// sysretq after it is the fast return; the conditional jumps between the two lead to the
// slow return path, whose iretq is the other way back to user mode.
// Everything found here is only a candidate until the injector has seen it behave.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"
#include "redirector/guest_access.h"

namespace cloudvmi {

struct KernelEntryPoints {
    uint64_t syscall_entry = 0;  // entry_SYSCALL_64, what MSR_LSTAR holds
    uint64_t sysret = 0;         // sysretq of the fast return path
    uint64_t slow_return = 0;    // swapgs_restore_regs_and_return_to_usermode
    uint64_t iret = 0;           // the iretq the slow path ends in (0 if not found)
    uint64_t idt_base = 0;
    bool pti = false;  // entry switches CR3 (page-table isolation active)

    std::string describe() const;
};

// The x86-64 IDT lives here on every Linux since 4.15 (CPU_ENTRY_AREA_RO_IDT).
constexpr uint64_t kLinuxIdtAddress = 0xfffffe0000000000ULL;

// --- pure scanners over code bytes (unit-tested on recorded kernel text) ---

// Handler addresses of present 64-bit interrupt/trap gates with a kernel code selector.
std::vector<uint64_t> parse_idt_handlers(std::span<const uint8_t> idt);

// Offset of `swapgs; mov %rsp,%gs:abs32` in code, or nullopt.
std::optional<size_t> find_syscall_entry_pattern(std::span<const uint8_t> code);

struct ReturnPaths {
    uint64_t sysret = 0;
    uint64_t slow_return = 0;  // 0 if no conditional jump out was found
    bool pti = false;
};
// Given the code starting at the syscall entry, finds the fast sysretq and the slow path.
std::optional<ReturnPaths> find_return_paths(std::span<const uint8_t> entry_code,
                                             uint64_t entry_address);

// First iretq in the slow-path code, as an offset.
std::optional<size_t> find_iret(std::span<const uint8_t> slow_path_code);

// --- discovery against a live guest (guest stopped) ---
ErrorOr<KernelEntryPoints> discover_kernel_entry_points(GuestAccess& guest, VcpuId vcpu);

}  // namespace cloudvmi
