// Guest-virtual to guest-physical translation by walking the x86-64 page tables.
//
// Lets the host reach memory of a guest process that is not running on any vCPU (a
// parked shadow) from its CR3 alone, through physical reads.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "common/error.h"

namespace cloudvmi {

using PhysicalReader = std::function<ErrorOr<void>(uint64_t pa, std::span<uint8_t> out)>;

struct Translation {
    uint64_t physical = 0;
    uint64_t page_size = 4096;  // 4 KiB, 2 MiB or 1 GiB
    bool writable = false;
    bool user = false;
    // Where the leaf entry lives and what it held: reading it again tells whether the
    // mapping is still the same (pages move: compaction, migration, THP).
    uint64_t entry_address = 0;
    uint64_t entry = 0;
};

// CR4.LA57: the guest uses 5-level paging.
inline constexpr uint64_t kCr4La57 = uint64_t{1} << 12;

// Translates `va` for the address space rooted at `cr3` (4-level, or 5-level if `la57`).
// ENOENT-free by design: an unmapped address is EFAULT, a malformed table EPROTO.
ErrorOr<Translation> translate_virtual(const PhysicalReader& read, uint64_t cr3, uint64_t va,
                                       bool la57 = false);

// Whether the top-level entry covering `va` is present in the tables rooted at `cr3`.
ErrorOr<bool> top_level_present(const PhysicalReader& read, uint64_t cr3, uint64_t va,
                                bool la57 = false);

}  // namespace cloudvmi
