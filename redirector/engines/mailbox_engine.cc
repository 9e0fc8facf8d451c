#include "redirector/engines/mailbox_engine.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "common/log.h"
#include "common/strings.h"
#include "redirector/shadow/batch_transfer.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

namespace {

constexpr uint64_t kPage = 4096;
// The CPU sets these in a page-table entry as the page is used: not a move.
constexpr uint64_t kAccessedDirty = (1u << 5) | (1u << 6);
constexpr size_t kRoundTripWindow = 1024;

uint64_t word_at(std::span<const uint8_t> bytes, size_t offset) {
    uint64_t v = 0;
    std::memcpy(&v, bytes.data() + offset, 8);
    return v;
}

}  // namespace

// The control block's words the host watches, read in one transfer.
struct MailboxEngine::ControlWords {
    uint64_t magic, generation, req, done, taken, batch_pid, skipped, heartbeat, batch_tsc;
};

MailboxEngine::MailboxEngine(PhysicalMemory& ram, MailboxTarget target, MailboxOptions options)
    : ram_(ram), target_(target), options_(options), take_timeout_(options.take_timeout) {}

ErrorOr<uint64_t> MailboxEngine::physical(uint64_t va) {
    uint64_t page = va & ~(kPage - 1);
    auto it = pages_.find(page);
    if (it == pages_.end()) {
        PhysicalReader read = [this](uint64_t pa, std::span<uint8_t> out) {
            return ram_.read(pa, out);
        };
        auto t = TRY(translate_virtual(read, target_.cr3, page, target_.la57));
        if (!t.user) return make_error(EBADMSG, "a page of the shadow's region is not user memory");
        it = pages_.emplace(page, t).first;
    }
    // The code page is read-only; every other page of the region must be writable.
    if (page != target_.region && !it->second.writable) {
        return make_error(EBADMSG, "a page of the shadow's region is not writable");
    }
    return it->second.physical + (va - page);
}

ErrorOr<void> MailboxEngine::revalidate_mappings() {
    // Leaf entries of neighbouring pages are neighbours in one page-table page.
    auto it = pages_.begin();
    while (it != pages_.end()) {
        uint64_t table = it->second.entry_address & ~(kPage - 1);
        uint64_t first = it->second.entry_address, last = first;
        auto end = it;
        while (end != pages_.end() && (end->second.entry_address & ~(kPage - 1)) == table) {
            first = std::min(first, end->second.entry_address);
            last = std::max(last, end->second.entry_address);
            ++end;
        }
        std::vector<uint8_t> entries(last + 8 - first);
        TRY(ram_.read(first, entries));
        for (; it != end;) {
            uint64_t now = word_at(entries, it->second.entry_address - first);
            if (((now ^ it->second.entry) & ~kAccessedDirty) == 0) {
                ++it;
                continue;
            }
            it = pages_.erase(it);  // moved (or unmapped): walked again on next use
            std::lock_guard lock(stats_mutex_);
            ++stats_.remaps;
        }
    }
    return {};
}

ErrorOr<MailboxEngine::ControlWords> MailboxEngine::read_control() {
    uint8_t raw[CTRL_WATCHED_END];
    TRY(read_region(target_.region + SHADOW_CTRL_OFFSET, raw));
    return ControlWords{word_at(raw, CTRL_MAGIC),       word_at(raw, CTRL_GENERATION),
                        word_at(raw, CTRL_REQ_SEQ),     word_at(raw, CTRL_DONE_SEQ),
                        word_at(raw, CTRL_TAKEN_SEQ),   word_at(raw, CTRL_BATCH_PID),
                        word_at(raw, CTRL_SKIPPED_SEQ), word_at(raw, CTRL_HEARTBEAT),
                        word_at(raw, CTRL_BATCH_TSC)};
}

ErrorOr<MailboxEngine::ControlWords> MailboxEngine::verify_shadow() {
    TRY(revalidate_mappings());
    auto ctrl = TRY(read_control());
    if (ctrl.magic != SHADOW_MAGIC || ctrl.generation != target_.generation) {
        return make_error(EBADMSG, "the shadow's control block is not ours any more");
    }
    auto code = ShadowCode::bytes();
    std::vector<uint8_t> seen(code.size());
    TRY(read_region(target_.region, seen));
    if (!std::equal(seen.begin(), seen.end(), code.begin())) {
        return make_error(EBADMSG, "the shadow's code was modified");
    }
    return ctrl;
}

ErrorOr<void> MailboxEngine::for_each_page(
    uint64_t va, size_t size,
    const std::function<ErrorOr<void>(uint64_t pa, size_t from, size_t n)>& fn) {
    size_t done = 0;
    while (done < size) {
        uint64_t at = va + done;
        size_t n = std::min<size_t>(size - done, kPage - (at & (kPage - 1)));
        TRY(fn(TRY(physical(at)), done, n));
        done += n;
    }
    return {};
}

ErrorOr<void> MailboxEngine::read_region(uint64_t va, std::span<uint8_t> out) {
    return for_each_page(va, out.size(), [&](uint64_t pa, size_t from, size_t n) {
        return ram_.read(pa, out.subspan(from, n));
    });
}

ErrorOr<void> MailboxEngine::write_region(uint64_t va, std::span<const uint8_t> data) {
    return for_each_page(va, data.size(), [&](uint64_t pa, size_t from, size_t n) {
        return ram_.write(pa, data.subspan(from, n));
    });
}

ErrorOr<void> MailboxEngine::write_word(uint64_t offset, uint64_t value) {
    return write_region(target_.region + SHADOW_CTRL_OFFSET + offset,
                        std::span(reinterpret_cast<const uint8_t*>(&value), 8));
}

ErrorOr<void> MailboxEngine::start() {
    TRY(renew_lease());  // checks the shadow first
    return calibrate_spin();
}

ErrorOr<void> MailboxEngine::calibrate_spin() {
    // The shadow spins by the guest's TSC; its rate comes from two batches some time apart
    // (a TSC stamp of each batch's end against our clock when we saw it end).
    constexpr double kFallbackTicksPerUs = 1000;  // a 1 GHz TSC, if the probe makes no sense
    SyscallBatch probe;
    probe.add(x86abi::kGetpid, {});
    TRY(write_word(CTRL_SPIN_TICKS, 0));
    TRY(execute(probe, Deadline::after(options_.batch_timeout)));
    auto first = TRY(read_control()).batch_tsc;
    auto t0 = last_done_;
    std::this_thread::sleep_for(Millis(20));
    TRY(execute(probe, Deadline::after(options_.batch_timeout)));
    auto second = TRY(read_control()).batch_tsc;
    double us = std::chrono::duration<double, std::micro>(last_done_ - t0).count();
    double rate = second > first && us > 0 ? static_cast<double>(second - first) / us : 0;
    tsc_per_us_ = rate >= 100 && rate <= 20000 ? rate : kFallbackTicksPerUs;
    LOG_INFO("the guest's TSC runs at %.0f MHz (%s)", tsc_per_us_,
             rate == tsc_per_us_ ? "measured" : "assumed: the probe gave nonsense");
    std::lock_guard lock(stats_mutex_);
    stats_.tsc_mhz = tsc_per_us_;
    return {};
}

uint64_t MailboxEngine::spin_for_next() const {
    auto spin = options_.shadow_spin;
    if (last_done_ != Clock::time_point{}) {
        auto gap = std::chrono::duration_cast<Micros>(Clock::now() - last_done_);
        if (gap < options_.shadow_spin_max) {
            spin = std::clamp(gap * 4, options_.shadow_spin, options_.shadow_spin_max);
        }
    }
    return static_cast<uint64_t>(tsc_per_us_ * static_cast<double>(spin.count()));
}

ErrorOr<void> MailboxEngine::renew_lease() {
    // Due again later even when this fails: the caller reports it, not in a tight loop.
    lease_renewed_ = Clock::now();
    TRY(verify_shadow());
    return write_word(CTRL_LEASE, target_.lease_iterations);
}

void MailboxEngine::poison_lease() {
    // Only into a page proven to be still the shadow's control block: its process may be
    // gone and the page reused. (Its code may have been changed: the lease ends it anyway.)
    auto shorten = [this]() -> ErrorOr<void> {
        TRY(revalidate_mappings());
        auto ctrl = TRY(read_control());
        if (ctrl.magic != SHADOW_MAGIC || ctrl.generation != target_.generation) {
            return make_error(EBADMSG, "its control page is not ours any more; left alone");
        }
        return write_word(CTRL_LEASE, 1);
    };
    if (auto r = shorten(); !r) {
        LOG_WARN("cannot shorten the shadow's lease: %s", r.error().describe().c_str());
    }
}

ErrorOr<void> MailboxEngine::withdraw(uint64_t seq) {
    TRY(write_word(CTRL_CANCEL_SEQ, seq));
    // Our store, then our load of TAKEN; the shadow stores TAKEN, then loads CANCEL.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    auto ctrl = TRY(read_control());
    if (ctrl.taken == seq) return {};  // too late: it runs (or skips) and reports DONE
    std::lock_guard lock(stats_mutex_);
    ++stats_.withdrawn;
    return make_error(EAGAIN, "withdrawn");
}

ErrorOr<void> MailboxEngine::wait_done(uint64_t seq, Deadline deadline) {
    auto posted = Clock::now();
    auto take_deadline = Deadline::after(take_timeout_);
    bool taken = false, withdrawing = false;
    auto nap = Micros(20);
    while (true) {
        auto ctrl = TRY(read_control());
        if (ctrl.done == seq) {
            if (withdrawing && ctrl.skipped == seq) return make_error(EAGAIN, "withdrawn");
            if (ctrl.batch_pid != static_cast<uint64_t>(target_.pid)) {
                return make_error(EBADMSG, strformat("the batch ran in pid %lld, not in the "
                                                     "shadow (%lld)",
                                                     static_cast<long long>(ctrl.batch_pid),
                                                     static_cast<long long>(target_.pid)));
            }
            return {};
        }
        taken = taken || ctrl.taken == seq;
        if (!taken && take_deadline.expired()) {
            TRY(withdraw(seq));
            withdrawing = true;
            taken = true;  // it ran or will run (skipping itself if it saw the withdrawal)
        }
        if (deadline.expired()) {
            return make_error(ETIMEDOUT,
                              "the shadow did not finish the batch in time (blocked "
                              "inside the guest?)");
        }
        if (Clock::now() - posted < options_.host_spin) {
            sched_yield();  // two cores: leave one to the vCPU that serves us
            continue;
        }
        std::this_thread::sleep_for(nap);
        nap = std::min(nap * 2, options_.host_sleep_max);
    }
}

ErrorOr<BatchOutcome> MailboxEngine::execute(const SyscallBatch& batch, Deadline deadline) {
    TRY(batch.validate(SHADOW_MAX_OPS, SHADOW_REGION_SIZE - SHADOW_DATA_OFFSET));
    posted_ = false;
    auto started = Clock::now();
    auto ctrl = TRY(verify_shadow());
    auto drain_deadline = Deadline::after(take_timeout_);
    while (ctrl.req != ctrl.done) {
        // A withdrawn batch the shadow has not skipped yet: has the guest run since?
        if (drain_deadline.expired()) {
            return make_error(EAGAIN, "the shadow has not come back from an earlier request");
        }
        std::this_thread::sleep_for(Millis(1));
        ctrl = TRY(read_control());
    }
    uint64_t seq = ctrl.done + 1;
    // Every page the batch touches is translated and found within reach now, so that
    // nothing can fail for want of a page once the batch may have run, and nothing is
    // written if one is missing.
    auto reachable = [this](uint64_t pa, size_t, size_t n) { return ram_.check_reachable(pa, n); };
    TRY(for_each_page(target_.region + SHADOW_OPS_OFFSET,
                      BATCH_HEADER_SIZE + batch.ops().size() * OP_SIZE, reachable));
    TRY(for_each_page(target_.region + SHADOW_DATA_OFFSET, batch.data_bytes(), reachable));
    auto enc = TRY(post_batch(batch, target_.region, [&](uint64_t va, std::span<const uint8_t> d) {
        return write_region(va, d);
    }));
    TRY(write_word(CTRL_LEASE, target_.lease_iterations));
    lease_renewed_ = Clock::now();
    if (tsc_per_us_ > 0) TRY(write_word(CTRL_SPIN_TICKS, spin_for_next()));
    posted_ = true;                      // from here on the batch may run, whatever fails
    TRY(write_word(CTRL_REQ_SEQ, seq));  // last: publishes the batch
    auto posted = Clock::now();
    TRY(wait_done(seq, deadline.min(Deadline::after(options_.batch_timeout))));
    auto done = Clock::now();
    auto out =
        TRY(collect_outcome(batch, enc, target_.region,
                            [&](uint64_t va, std::span<uint8_t> d) { return read_region(va, d); }));
    last_done_ = Clock::now();
    LOG_TRACE("mailbox batch %llu: post %.0f us, wait %.0f us, collect %.0f us",
              static_cast<unsigned long long>(seq),
              std::chrono::duration<double, std::micro>(posted - started).count(),
              std::chrono::duration<double, std::micro>(done - posted).count(),
              std::chrono::duration<double, std::micro>(last_done_ - done).count());
    record_round_trip(std::chrono::duration<double, std::micro>(last_done_ - started).count());
    return out;
}

void MailboxEngine::record_round_trip(double us) {
    std::lock_guard lock(stats_mutex_);
    ++stats_.batches;
    round_trips_.push_back(us);
    if (round_trips_.size() > kRoundTripWindow) round_trips_.pop_front();
}

MailboxStats MailboxEngine::stats() const {
    std::lock_guard lock(stats_mutex_);
    MailboxStats s = stats_;
    if (round_trips_.empty()) return s;
    std::vector<double> v(round_trips_.begin(), round_trips_.end());
    std::sort(v.begin(), v.end());
    auto pct = [&](double p) {
        return v[std::min(v.size() - 1, static_cast<size_t>(p * v.size()))];
    };
    s.p50_us = pct(0.5);
    s.p90_us = pct(0.9);
    s.p99_us = pct(0.99);
    s.max_us = v.back();
    return s;
}

}  // namespace cloudvmi
