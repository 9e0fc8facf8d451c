// The mailbox engine against guest RAM in a vector and a thread playing the shadow's loop
// (shadow_payload.S's park loop and run_posted, op by op): page tables walked and
// re-walked when a page moves, tampering detected before anything is written, withdrawal.
#include "redirector/engines/mailbox_engine.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <mutex>
#include <thread>

#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;

namespace {

constexpr uint64_t kP = 1, kW = 2, kU = 4;
constexpr uint64_t kRegion = 0x7f0000000000ULL;
constexpr uint64_t kCr3 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kPt = 0x4000;
constexpr uint64_t kFirstPage = 0x100000;  // region pages from here, one after another
constexpr int64_t kShadowPid = 4242;

class FakeRam : public PhysicalMemory {
  public:
    FakeRam() : bytes_(8 << 20) {}
    ErrorOr<void> read(uint64_t pa, std::span<uint8_t> out) override {
        std::lock_guard lock(mutex);
        if (pa + out.size() > bytes_.size()) return make_error(EFAULT, "beyond RAM");
        std::memcpy(out.data(), bytes_.data() + pa, out.size());
        return {};
    }
    ErrorOr<void> write(uint64_t pa, std::span<const uint8_t> data) override {
        std::lock_guard lock(mutex);
        if (pa + data.size() > bytes_.size()) return make_error(EFAULT, "beyond RAM");
        std::memcpy(bytes_.data() + pa, data.data(), data.size());
        ++writes;
        return {};
    }
    uint64_t get(uint64_t pa) {
        uint64_t v;
        std::memcpy(&v, bytes_.data() + pa, 8);
        return v;
    }
    void put(uint64_t pa, uint64_t v) { std::memcpy(bytes_.data() + pa, &v, 8); }
    uint8_t* at(uint64_t pa) { return bytes_.data() + pa; }

    std::mutex mutex;
    int writes = 0;

  private:
    std::vector<uint8_t> bytes_;
};

uint64_t index_at(uint64_t va, int level) {
    return (va >> (12 + 9 * (level - 1))) & 0x1ff;
}

// The region's pages mapped 4 KiB each, the code page read-only; returns the leaf entries'
// physical addresses by page index.
struct Guest {
    FakeRam ram;
    std::atomic<bool> shadow_runs{true};
    std::atomic<bool> stop{false};
    std::atomic<int64_t> batch_pid{kShadowPid};
    uint64_t generation = 0x1234abcd5678ef90ULL;
    std::thread shadow;

    uint64_t pte_address(uint64_t page) { return kPt + index_at(kRegion + page * 4096, 1) * 8; }
    uint64_t physical(uint64_t page) { return ram.get(pte_address(page)) & ~0xfffULL; }
    uint64_t ctrl(uint64_t field) { return physical(1) + field; }

    Guest() {
        ram.put(kCr3 + index_at(kRegion, 4) * 8, kPdpt | kP | kW | kU);
        ram.put(kPdpt + index_at(kRegion, 3) * 8, kPd | kP | kW | kU);
        ram.put(kPd + index_at(kRegion, 2) * 8, kPt | kP | kW | kU);
        for (uint64_t page = 0; page < SHADOW_REGION_SIZE / 4096; ++page) {
            uint64_t flags = kP | kU | (page == 0 ? 0 : kW);
            ram.put(pte_address(page), (kFirstPage + page * 4096) | flags);
        }
        auto code = ShadowCode::bytes();
        std::memcpy(ram.at(physical(0)), code.data(), code.size());
        ram.put(ctrl(CTRL_MAGIC), SHADOW_MAGIC);
        ram.put(ctrl(CTRL_GENERATION), generation);
        ram.put(ctrl(CTRL_CANCEL_SEQ), ~0ULL);
        shadow = std::thread([this] { loop(); });
    }
    ~Guest() {
        stop = true;
        shadow.join();
    }

    // One pass of the park loop: take a posted batch unless withdrawn, "run" its ops.
    void loop() {
        while (!stop) {
            std::this_thread::sleep_for(std::chrono::microseconds(50));
            if (!shadow_runs) continue;
            std::lock_guard lock(ram.mutex);
            uint64_t req = ram.get(ctrl(CTRL_REQ_SEQ));
            if (req == ram.get(ctrl(CTRL_DONE_SEQ))) continue;
            ram.put(ctrl(CTRL_TAKEN_SEQ), req);
            if (ram.get(ctrl(CTRL_CANCEL_SEQ)) == req) {
                ram.put(ctrl(CTRL_SKIPPED_SEQ), req);
            } else {
                ram.put(ctrl(CTRL_BATCH_PID), static_cast<uint64_t>(batch_pid.load()));
                uint64_t ops = physical(SHADOW_OPS_OFFSET / 4096);
                uint64_t n = ram.get(ops + BATCH_NOPS);
                for (uint64_t i = 0; i < n; ++i) {
                    uint64_t rec = ops + BATCH_HEADER_SIZE + i * OP_SIZE;
                    uint64_t nr = ram.get(rec + OP_NR);
                    ram.put(rec + OP_RESULT, nr == x86abi::kGetpid ? kShadowPid : nr * 10);
                }
            }
            ram.put(ctrl(CTRL_DONE_SEQ), req);
        }
    }

    MailboxTarget target() const {
        return MailboxTarget{kShadowPid, kRegion, kCr3, false, generation, 1000};
    }
};

MailboxOptions fast_options() {
    MailboxOptions o;
    o.take_timeout = Millis(200);
    o.batch_timeout = Millis(2000);
    return o;
}

SyscallBatch two_ops() {
    SyscallBatch b;
    b.add(x86abi::kGetpid, {});
    b.add(x86abi::kGetuid, {});
    return b;
}

}  // namespace

TEST_CASE("mailbox: a batch makes one round trip through guest RAM", "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    // This fake shadow has no TSC: the calibration falls back to an assumed 1 GHz.
    CHECK(engine.stats().tsc_mhz == 1000);
    CHECK(g.ram.get(g.ctrl(CTRL_LEASE)) == 1000);
    for (int i = 1; i <= 3; ++i) {
        auto out = engine.execute(two_ops(), Deadline::after(Millis(2000)));
        REQUIRE(out);
        CHECK(out->results[0] == kShadowPid);
        CHECK(out->results[1] == x86abi::kGetuid * 10);
        CHECK(g.ram.get(g.ctrl(CTRL_DONE_SEQ)) == static_cast<uint64_t>(i + 2));  // + calibration
        // Back to back: four times the gap, at least 1 ms (1e6 ticks at 1 GHz), at most 20.
        CHECK(g.ram.get(g.ctrl(CTRL_SPIN_TICKS)) >= 1'000'000);
        CHECK(g.ram.get(g.ctrl(CTRL_SPIN_TICKS)) <= 20'000'000);
    }
    CHECK(engine.stats().batches == 5);
    CHECK(engine.stats().p50_us > 0);
}

TEST_CASE("mailbox: a page that moved is walked again", "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    REQUIRE(engine.execute(two_ops(), Deadline::after(Millis(2000))));
    {
        // Compaction: the control page's content goes elsewhere, the entry follows it.
        std::lock_guard lock(g.ram.mutex);
        uint64_t old_page = g.physical(1), new_page = 0x600000;
        std::memcpy(g.ram.at(new_page), g.ram.at(old_page), 4096);
        std::memset(g.ram.at(old_page), 0xee, 4096);
        g.ram.put(g.pte_address(1), new_page | kP | kW | kU);
    }
    auto out = engine.execute(two_ops(), Deadline::after(Millis(2000)));
    REQUIRE(out);
    CHECK(out->results[0] == kShadowPid);
    CHECK(engine.stats().remaps == 1);
    CHECK(g.ram.get(0x600000 + CTRL_DONE_SEQ) == 4);
    {
        // The CPU marking the page accessed and dirty is no move.
        std::lock_guard lock(g.ram.mutex);
        g.ram.put(g.pte_address(1), g.ram.get(g.pte_address(1)) | 0x60);
    }
    REQUIRE(engine.execute(two_ops(), Deadline::after(Millis(2000))));
    CHECK(engine.stats().remaps == 1);
}

TEST_CASE("mailbox: modified code or a foreign control block is refused before any write",
          "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    SECTION("code") {
        std::lock_guard lock(g.ram.mutex);
        g.ram.at(g.physical(0))[0x20] ^= 0xff;
    }
    SECTION("generation") {
        std::lock_guard lock(g.ram.mutex);
        g.ram.put(g.ctrl(CTRL_GENERATION), 7);
    }
    SECTION("a control page no longer writable") {
        std::lock_guard lock(g.ram.mutex);
        g.ram.put(g.pte_address(1), g.physical(1) | kP | kU);  // control page read-only
    }
    int writes = g.ram.writes;
    auto out = engine.execute(two_ops(), Deadline::after(Millis(2000)));
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == EBADMSG);
    CHECK(g.ram.writes == writes);
}

TEST_CASE("mailbox: a batch run by another process is not trusted", "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    g.batch_pid = 999;
    auto out = engine.execute(two_ops(), Deadline::after(Millis(2000)));
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == EBADMSG);
}

TEST_CASE("mailbox: a batch not taken in time is withdrawn and never runs", "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    g.shadow_runs = false;  // the VM is paused
    auto start = Clock::now();
    auto out = engine.execute(two_ops(), Deadline::after(Millis(2000)));
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == EAGAIN);
    CHECK(elapsed_ms(start) < 1000);
    CHECK(g.ram.get(g.ctrl(CTRL_CANCEL_SEQ)) == 3);
    // Still paused: the next request does not overwrite the withdrawn one.
    auto second = engine.execute(two_ops(), Deadline::after(Millis(2000)));
    REQUIRE_FALSE(second);
    CHECK(second.error().code() == EAGAIN);
    CHECK(g.ram.get(g.ctrl(CTRL_REQ_SEQ)) == 3);
    g.shadow_runs = true;  // resumed: the withdrawn batch is skipped, the next one runs
    bool served = false;
    for (int i = 0; i < 20 && !served; ++i) {
        auto again = engine.execute(two_ops(), Deadline::after(Millis(2000)));
        served = static_cast<bool>(again);
        if (!served) std::this_thread::sleep_for(Millis(10));
    }
    CHECK(served);
    CHECK(g.ram.get(g.ctrl(CTRL_SKIPPED_SEQ)) == 3);
    CHECK(engine.stats().withdrawn == 1);
}

TEST_CASE("mailbox: a buffer page out of reach fails before anything is posted", "[mailbox]") {
    Guest g;
    MailboxEngine engine(g.ram, g.target(), fast_options());
    REQUIRE(engine.start());
    SyscallBatch b;
    auto out_buf = b.output(3 * 4096);  // data pages 0..2
    b.add(x86abi::kGetpid, {SyscallBatch::buf(out_buf)});
    {
        std::lock_guard lock(g.ram.mutex);
        uint64_t page = (SHADOW_DATA_OFFSET / 4096) + 2;
        g.ram.put(g.pte_address(page), (64ULL << 20) | kP | kW | kU);  // beyond the fake RAM
    }
    uint64_t req = g.ram.get(g.ctrl(CTRL_REQ_SEQ));
    int writes = g.ram.writes;
    auto out = engine.execute(b, Deadline::after(Millis(2000)));
    REQUIRE_FALSE(out);
    CHECK(out.error().code() == EFAULT);
    CHECK_FALSE(engine.posted());
    CHECK(g.ram.writes == writes);
    CHECK(g.ram.get(g.ctrl(CTRL_REQ_SEQ)) == req);
}
