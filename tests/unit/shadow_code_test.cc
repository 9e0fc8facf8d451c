// redirector/shadow/shadow_process.h ShadowCode: the guest payload assembled from
// redirector/shadow/shadow_payload.S into this binary, checked byte by byte where the host relies
// on it.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstring>

#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/shadow_process.h"

using namespace cloudvmi;

namespace {

// Target of a rip-relative `lea/mov reg, [rip + disp32]` (3 opcode bytes + disp32) at `at`.
uint64_t rip_relative_target(std::span<const uint8_t> code, uint64_t at) {
    int32_t disp;
    std::memcpy(&disp, code.data() + at + 3, 4);
    return at + 7 + static_cast<int64_t>(disp);
}

std::vector<uint8_t> bytes_at(std::span<const uint8_t> code, uint64_t at, size_t n) {
    return std::vector<uint8_t>(code.begin() + static_cast<std::ptrdiff_t>(at),
                                code.begin() + static_cast<std::ptrdiff_t>(at + n));
}

const std::vector<uint8_t> kSyscall = {0x0f, 0x05};
const std::vector<uint8_t> kLeaRbxRip = {0x48, 0x8d, 0x1d};  // lea rbx, [rip + disp32]

}  // namespace

TEST_CASE("shadow code fits its slot in the region", "[shadow]") {
    auto code = ShadowCode::bytes();
    REQUIRE_FALSE(code.empty());
    CHECK(code.size() > SHADOW_ENTRY_OFFSET);
    // The control block follows the code in the same region.
    CHECK(code.size() <= SHADOW_CTRL_OFFSET);
}

TEST_CASE("shadow code landing pad and entry", "[shadow]") {
    auto code = ShadowCode::bytes();
    REQUIRE(code.size() > 0x10);
    // A clone the kernel restarts at rip - 2 must hit a syscall, not garbage.
    CHECK(code[0x0e] == 0x0f);
    CHECK(code[0x0f] == 0x05);
    // Everything before it traps.
    for (size_t i = 0; i < 0x0e; ++i) {
        INFO("byte " << i);
        CHECK(code[i] == 0xcc);
    }
    CHECK(ShadowCode::child_entry() == SHADOW_ENTRY_OFFSET);
    CHECK(ShadowCode::child_entry() == 0x10);
}

TEST_CASE("shadow entry points are inside the code and ordered", "[shadow]") {
    auto code = ShadowCode::bytes();
    const uint64_t size = code.size();
    const uint64_t points[] = {ShadowCode::child_entry(),   ShadowCode::park_loop(),
                               ShadowCode::sleep_syscall(), ShadowCode::after_sleep(),
                               ShadowCode::run_batch(),     ShadowCode::batch_done(),
                               ShadowCode::exit()};
    for (uint64_t p : points) {
        INFO("offset " << p);
        CHECK(p < size);
    }
    CHECK(ShadowCode::child_entry() < ShadowCode::park_loop());
    CHECK(ShadowCode::park_loop() < ShadowCode::sleep_syscall());
    CHECK(ShadowCode::sleep_syscall() < ShadowCode::after_sleep());
    CHECK(ShadowCode::after_sleep() < ShadowCode::run_batch());
    CHECK(ShadowCode::run_batch() < ShadowCode::batch_done());
    CHECK(ShadowCode::batch_done() < ShadowCode::exit());

    // The sleep syscall is exactly the instruction before after_sleep, where a parked
    // shadow is caught on its way back from the kernel.
    REQUIRE(ShadowCode::sleep_syscall() + 2 <= size);
    CHECK(bytes_at(code, ShadowCode::sleep_syscall(), 2) == kSyscall);
    CHECK(ShadowCode::after_sleep() == ShadowCode::sleep_syscall() + 2);

    // exit ends in exit_group: a syscall follows it before the end of the code.
    auto tail = bytes_at(code, ShadowCode::exit(), size - ShadowCode::exit());
    CHECK(std::search(tail.begin(), tail.end(), kSyscall.begin(), kSyscall.end()) != tail.end());
}

TEST_CASE("rip-relative references were resolved to the control block", "[shadow]") {
    auto code = ShadowCode::bytes();
    // child_entry starts with `lea rbx, [rip + CTRL]`: 48 8d 1d disp32. If the linker had
    // not resolved the position-independent reference, the target would not be the
    // control block's offset from the start of the code.
    const uint64_t entry = ShadowCode::child_entry();
    REQUIRE(entry + 7 <= code.size());
    CHECK(bytes_at(code, entry, 3) == kLeaRbxRip);
    CHECK(rip_relative_target(code, entry) == SHADOW_CTRL_OFFSET);

    // The other entry points the host resumes at reload rbx the same way.
    for (uint64_t at :
         {ShadowCode::park_loop(), ShadowCode::after_sleep(), ShadowCode::run_batch()}) {
        INFO("entry point at " << at);
        REQUIRE(at + 7 <= code.size());
        CHECK(bytes_at(code, at, 3) == kLeaRbxRip);
        CHECK(rip_relative_target(code, at) == SHADOW_CTRL_OFFSET);
    }
}
