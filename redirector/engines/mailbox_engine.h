// Batches of syscalls through the shadow's mailbox, with no VM stop.
//
// The shadow already polls its control block (shadow_payload.S): when REQ_SEQ differs from
// DONE_SEQ it runs the posted batch and copies REQ_SEQ to DONE_SEQ. Here the host posts
// and collects through guest RAM read and written from outside (GuestRam), translating
// the shadow's addresses with its own page tables. One round trip per batch.
//
// Trust before use: before a batch is posted, every page it touches must still be mapped
// where it was (its page-table entry is read again; a moved page is walked again), the
// control block must carry the magic and this shadow's generation, and the code page must
// be byte for byte what we wrote; after it ran, the pid that ran it must be the shadow's.
// A doubt is EBADMSG: the caller discards the shadow. Nothing is written before every
// check passed.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "common/deadline.h"
#include "common/error.h"
#include "redirector/engines/batch_engine.h"
#include "redirector/guest/guest_ram.h"
#include "redirector/shadow/syscall_batch.h"
#include "redirector/x86/page_walker.h"

namespace cloudvmi {

// The shadow as bootstrap left it.
struct MailboxTarget {
    int64_t pid = 0;
    uint64_t region = 0;
    uint64_t cr3 = 0;
    bool la57 = false;
    uint64_t generation = 0;
    uint64_t lease_iterations = 0;
};

struct MailboxOptions {
    // A running shadow takes a posted batch within its longest sleep; past this the batch
    // is withdrawn (the VM is paused, or the shadow is gone).
    Millis take_timeout{500};
    Millis batch_timeout{10000};  // a taken batch completes within this
    // After a batch the shadow polls without sleeping (timed by the guest's TSC, whose rate
    // is measured at start): while requests flow, four times the last gap between batches, within
    // [shadow_spin, shadow_spin_max]; after a quiet spell, shadow_spin (the gap between
    // the batches of one file operation).
    Micros shadow_spin{1000};
    Micros shadow_spin_max{20000};
    Micros host_spin{200};        // the host polls without sleeping this long
    Micros host_sleep_max{1000};  // then sleeps, doubling up to this
    // An idle session renews the shadow's lease this often (every batch renews it too).
    Millis lease_renewal{150000};
};

struct MailboxStats {
    uint64_t batches = 0;
    uint64_t remaps = 0;     // pages found moved and walked again
    double tsc_mhz = 0;      // the guest's TSC rate, by which the shadow times its polling
    uint64_t withdrawn = 0;  // batches not taken in time
    double p50_us = 0, p90_us = 0, p99_us = 0, max_us = 0;  // recent round trips
};

class MailboxEngine final : public BatchEngine {
  public:
    MailboxEngine(PhysicalMemory& ram, MailboxTarget target, MailboxOptions options);

    const char* name() const override { return "mailbox"; }

    // Checks the shadow (as before every batch) and tells it to spin between batches.
    ErrorOr<void> start();
    // Posts a batch and waits for its outcome. Errors: EBADMSG (the shadow cannot be
    // trusted), EAGAIN (not taken in time, withdrawn: nothing ran), ETIMEDOUT (taken, not
    // finished: the shadow is stuck in the guest), EFAULT (a page out of reach).
    ErrorOr<BatchOutcome> execute(const SyscallBatch& batch, Deadline deadline) override;
    // Whether the last execute() got as far as publishing its batch: after a failure, false
    // means nothing of it ran.
    bool posted() const override { return posted_; }
    // The lease renewal of an idle session.
    std::optional<Clock::time_point> idle_due() const override {
        return lease_renewed_ + options_.lease_renewal;
    }
    ErrorOr<void> idle_work() override { return renew_lease(); }
    // Makes the shadow exit at its next sleep (best effort).
    void abandon() override { poison_lease(); }

    // Renews the shadow's lease without a batch.
    ErrorOr<void> renew_lease();
    // Makes the shadow exit at its next sleep (best effort): for a shadow given up.
    void poison_lease();

    // How long a posted batch may wait to be taken (options' take_timeout by default);
    // shorter while the VM is known to be paused by someone else.
    void set_take_timeout(Millis t) { take_timeout_ = t; }

    MailboxStats stats() const;
    const MailboxTarget& target() const { return target_; }

  private:
    struct ControlWords;
    // The guest-physical address of `va` in the shadow, from the cache or a walk.
    ErrorOr<uint64_t> physical(uint64_t va);
    // Measures the guest's TSC rate, by which the shadow times its polling.
    ErrorOr<void> calibrate_spin();
    // Reads every cached leaf entry again (those in one page-table page in one read);
    // forgets what moved, to be walked again.
    ErrorOr<void> revalidate_mappings();
    // The checks made before every use; returns the control words it read.
    ErrorOr<ControlWords> verify_shadow();
    ErrorOr<ControlWords> read_control();
    ErrorOr<void> write_region(uint64_t va, std::span<const uint8_t> data);
    // Calls `fn` for each page-sized piece of [va, va+size) with its physical address.
    ErrorOr<void> for_each_page(
        uint64_t va, size_t size,
        const std::function<ErrorOr<void>(uint64_t pa, size_t from, size_t n)>& fn);
    ErrorOr<void> read_region(uint64_t va, std::span<uint8_t> out);
    ErrorOr<void> write_word(uint64_t offset, uint64_t value);
    // Waits until `done` says the batch `seq` is finished; withdraws it when not taken.
    ErrorOr<void> wait_done(uint64_t seq, Deadline deadline);
    ErrorOr<void> withdraw(uint64_t seq);
    void record_round_trip(double us);
    // The shadow's spin after the batch about to be posted, in loop iterations.
    uint64_t spin_for_next() const;

    PhysicalMemory& ram_;
    MailboxTarget target_;
    MailboxOptions options_;
    Millis take_timeout_;
    double tsc_per_us_ = 0;
    Clock::time_point last_done_{};
    Clock::time_point lease_renewed_ = Clock::now();
    bool posted_ = false;
    std::map<uint64_t, Translation> pages_;  // by page-aligned virtual address
    mutable std::mutex stats_mutex_;         // guards stats_ and round_trips_ only
    MailboxStats stats_;
    std::deque<double> round_trips_;
};

}  // namespace cloudvmi
