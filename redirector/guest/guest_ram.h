// Guest-physical memory reached from the host while the VM runs.
//
// QEMU keeps guest RAM in its own address space; as root, /proc/<qemu>/mem reads and writes
// it without stopping anything. Which mapping holds RAM is proven, never guessed: a random
// cookie is written into a guest page whose guest-physical address is known (through the
// stub, VM stopped) and must appear at exactly one candidate mapping at that offset.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"
#include "common/unique_fd.h"
#include "redirector/guest/guest_access.h"
#include "redirector/x86/page_walker.h"

namespace cloudvmi {

// Guest-physical reads and writes, whatever reaches them.
class PhysicalMemory {
  public:
    virtual ~PhysicalMemory() = default;
    virtual ErrorOr<void> read(uint64_t pa, std::span<uint8_t> out) = 0;
    virtual ErrorOr<void> write(uint64_t pa, std::span<const uint8_t> data) = 0;
    // Whether [pa, pa+size) can be read and written (by default: by reading it).
    virtual ErrorOr<void> check_reachable(uint64_t pa, size_t size) {
        std::vector<uint8_t> scratch(size);
        return read(pa, scratch);
    }
};

// A writable private or shared mapping of QEMU's that may hold guest RAM.
struct RamCandidate {
    uint64_t start = 0;
    uint64_t size = 0;
    std::string name;  // the maps file's path column ("" for anonymous memory)
};

// The candidates in a /proc/PID/maps text: writable, at least `min_size` bytes, anonymous
// or memfd/file backed (memory-backend-file); never a library or the heap.
std::vector<RamCandidate> ram_candidates(std::string_view maps_text, uint64_t min_size);

// Guest-physical addresses that are linear in QEMU's RAM block whatever the machine type:
// below 2 GiB (pc and q35 start their PCI hole at 2 GiB at the earliest).
constexpr uint64_t kLinearRamLimit = 0x80000000ULL;

class GuestRam : public PhysicalMemory {
  public:
    // Finds QEMU's RAM mapping in process `qemu_pid`. `stub` reaches guest-physical memory
    // by other means (the gdbstub, VM stopped); the cookie goes to `probe_pa`, which must
    // lie in a page the caller owns, and its bytes are put back afterwards.
    static ErrorOr<std::unique_ptr<GuestRam>> locate(pid_t qemu_pid, uint64_t probe_pa,
                                                     GuestPhysicalAccess& stub);

    ErrorOr<void> read(uint64_t pa, std::span<uint8_t> out) override;
    ErrorOr<void> write(uint64_t pa, std::span<const uint8_t> data) override;
    ErrorOr<void> check_reachable(uint64_t pa, size_t size) override {
        return check_range(pa, size);
    }

    pid_t qemu_pid() const { return pid_; }
    uint64_t host_address() const { return host_base_; }
    uint64_t reachable() const { return limit_; }  // guest-physical bytes from 0

  private:
    GuestRam(pid_t pid, UniqueFd mem, uint64_t host_base, uint64_t limit)
        : pid_(pid), mem_(std::move(mem)), host_base_(host_base), limit_(limit) {}
    ErrorOr<void> check_range(uint64_t pa, size_t len) const;
    // pread into `in`, or pwrite from `out`, until done.
    ErrorOr<void> transfer(uint64_t pa, size_t size, bool writing, uint8_t* in, const uint8_t* out);

    pid_t pid_;
    UniqueFd mem_;  // /proc/<pid>/mem, read-write
    uint64_t host_base_;
    uint64_t limit_;
};

}  // namespace cloudvmi
