// Write-ahead record of every change CloudVMI makes to a guest, kept where it survives us.
//
// QEMU leaves a VM paused, with our breakpoints armed, when its gdb client dies, and a
// hijacked thread would be left half-modified. So before each change the injector and the
// shadow update this record; it lives in a shared file mapping (the guardian process and
// the next attach read it after a SIGKILL) and is published atomically: the writer fills
// the inactive slot, then flips the sequence number.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "common/error.h"

namespace cloudvmi {

enum class ThreadPhase : uint32_t {
    kNone = 0,
    kHeld = 1,      // stopped at sysretq untouched, or at its landing with our registers
    kInFlight = 2,  // executing an injected syscall or our code, towards its landing
};

enum class ShadowPhase : uint32_t {
    kNone = 0,
    kStarting = 1,       // clone issued; the shadow may exist but has not been caught yet
    kParked = 2,         // looping in its page, no breakpoint needed
    kHeld = 3,           // stopped at one of its breakpoints
    kBatchInFlight = 4,  // running a batch towards its batch_done breakpoint
};

struct RecoveryRecord {
    static constexpr uint32_t kMagic = 0x43564d4a;  // "CVMJ"
    static constexpr uint32_t kVersion = 4;
    static constexpr int kMaxBreakpoints = 8;

    uint32_t magic = kMagic;
    uint32_t version = kVersion;
    uint64_t session_id = 0;
    int32_t owner_pid = 0;
    uint32_t clean = 1;  // 1: nothing of ours is left in the guest
    char endpoint[256] = {};
    // Which run of the VM this is about: a restarted QEMU recreates its socket (another
    // inode and change time), a rebooted kernel moves its entry (KASLR). A log about an
    // earlier run must never be replayed onto a later one.
    uint64_t endpoint_identity = 0;

    uint64_t syscall_entry = 0;
    uint64_t sysret = 0;
    uint64_t slow_return = 0;
    uint64_t iret = 0;

    uint32_t breakpoint_count = 0;
    // 1 from just before our stub connection until the VM has run for us since: QEMU
    // pauses a VM when its stub takes a connection, so until then a "paused" VM is our
    // doing, not its owner's, and resuming it is part of the recovery. (Earlier records
    // have 0 in this slot, which was padding.)
    uint32_t connect_pause = 0;
    uint64_t breakpoints[kMaxBreakpoints] = {};

    ThreadPhase thread_phase = ThreadPhase::kNone;
    int32_t thread_vcpu = 0;
    uint64_t thread_cr3 = 0;
    uint64_t landing = 0;        // user address where the thread comes back to us
    kvm_regs thread_regs{};      // the thread's own registers, to put back
    uint64_t parent_region = 0;  // region mapped in the hijacked process (0: none)
    int64_t helper_pid = 0;      // the hijacked process's clone child, not yet reaped (0: none)

    ShadowPhase shadow_phase = ShadowPhase::kNone;
    int32_t shadow_vcpu = 0;
    int64_t shadow_pid = 0;
    uint64_t shadow_cr3 = 0;
    uint64_t shadow_region = 0;

    // Whether the log is about an earlier run of the VM now known as `current_identity`.
    bool about_earlier_vm_run(uint64_t current_identity) const {
        return endpoint_identity != 0 && endpoint_identity != current_identity;
    }
    bool has_breakpoint(uint64_t addr) const;
    void add_breakpoint(uint64_t addr);
    void remove_breakpoint(uint64_t addr);
    // True when nothing in the guest would need undoing (our connection's pause aside:
    // a detach undoes that).
    bool nothing_to_undo() const;
};

class RecoveryLog {
  public:
    // A log kept in memory only (unit tests, the guardian's working copy).
    RecoveryLog();
    // A log backed by a file other processes can read after we die. With `keep`, the last
    // committed record of an existing file becomes the working copy; otherwise the file
    // starts with an empty (clean) record.
    static ErrorOr<std::unique_ptr<RecoveryLog>> open_file(const std::string& path,
                                                           bool keep = false);
    ~RecoveryLog();

    RecoveryRecord& edit() { return working_; }
    const RecoveryRecord& current() const { return working_; }
    // Publishes the working copy.
    void commit();
    const std::string& path() const { return path_; }

    // Reads the last committed record of a log file written by another process.
    static ErrorOr<RecoveryRecord> read_file(const std::string& path);
    // The same from the bytes of such a file, untrusted: size, magic and version checked,
    // endpoint terminated, breakpoint count bounded. `origin` names the file in errors.
    static ErrorOr<RecoveryRecord> parse(std::span<const uint8_t> bytes, const std::string& origin);

  private:
    RecoveryRecord working_;
    std::string path_;
    void* map_ = nullptr;
    size_t map_size_ = 0;
    int fd_ = -1;
};

}  // namespace cloudvmi
