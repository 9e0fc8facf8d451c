// redirector/guest/gdbstub_access.h: decoding and encoding QEMU's 'g' register file.
#include "redirector/guest/gdbstub_access.h"

#include <catch2/catch.hpp>

#include "common/strings.h"
#include "tests/unit/test_helpers.h"

using namespace cloudvmi;

namespace {

gdb::RegisterLayout qemu_layout() {
    auto layout = gdb::RegisterLayout::load([](const std::string& name) -> ErrorOr<std::string> {
        return test::read_text("qemu-7.2/" + name);
    });
    REQUIRE(layout.has_value());
    return *layout;
}

std::vector<uint8_t> recorded_g_packet() {
    std::string hex = test::read_text("qemu-7.2/g_packet.hex");
    while (!hex.empty() && (hex.back() == '\n' || hex.back() == '\r'))
        hex.pop_back();
    auto raw = hex_decode(hex);
    REQUIRE(raw.has_value());
    return *raw;
}

// A layout of just the registers decode needs, without the optional ones.
gdb::RegisterLayout minimal_layout(std::vector<std::string> drop = {}) {
    std::vector<gdb::RegisterInfo> regs;
    int n = 0;
    auto add = [&](const char* name, size_t bytes) {
        for (const auto& d : drop) {
            if (d == name) return;
        }
        regs.push_back({name, n++, bytes, 0});
    };
    for (const char* r : {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                          "r11", "r12", "r13", "r14", "r15", "rip"}) {
        add(r, 8);
    }
    add("eflags", 4);
    for (const char* s : {"cs", "ss", "ds", "es", "fs", "gs"})
        add(s, 4);
    add("cr3", 8);
    auto layout = gdb::RegisterLayout::from_registers(std::move(regs));
    REQUIRE(layout.has_value());
    return *layout;
}

}  // namespace

TEST_CASE("decode the recorded QEMU 7.2 'g' reply", "[gdbstub]") {
    auto layout = qemu_layout();
    auto raw = recorded_g_packet();
    REQUIRE(raw.size() == layout.total_bytes());

    auto s = GdbstubAccess::decode(layout, raw);
    REQUIRE(s.has_value());

    // Stopped in the kernel (the idle loop): kernel rip/rsp, CPL 0 selectors.
    CHECK(s->regs.rip == 0xffffffffb14592ebULL);
    CHECK(s->regs.rip >= 0xffff800000000000ULL);
    CHECK(s->regs.rsp == 0xffffffffb2403e98ULL);
    CHECK(s->regs.rbp == 0xffffffffb241aa40ULL);
    CHECK(s->regs.rax == 0x1ad40);
    CHECK(s->regs.rdx == 0x4000000000000000ULL);
    CHECK(s->regs.r10 == 0xfffffffbULL);
    CHECK(s->regs.r15 == 0x14790);
    CHECK(s->regs.rflags == 0x246);  // IF, ZF, PF and the always-one bit 1
    CHECK((s->regs.rflags & 0x202) == 0x202);
    CHECK(s->sregs.cs.selector == 0x10);
    CHECK(s->sregs.ss.selector == 0x18);
    CHECK(s->sregs.ds.selector == 0);
    CHECK(s->sregs.gs.selector == 0);
    CHECK_FALSE(s->user_mode());

    // Bases and control registers of a 64-bit Linux kernel.
    CHECK(s->sregs.fs.base == 0);
    CHECK(s->sregs.gs.base == 0xffff8ed91f400000ULL);  // per-cpu area
    CHECK(s->kernel_gs_base == 0);
    CHECK(s->sregs.cr0 == 0x80050033ULL);
    CHECK((s->sregs.cr0 & 0x80000001ULL) == 0x80000001ULL);  // PG and PE
    CHECK(s->sregs.cr2 == 0x5794a9);
    CHECK(s->sregs.cr3 == 0x17c44000ULL);
    CHECK((s->sregs.cr3 & 0xfff) == 0);
    CHECK(s->sregs.cr4 == 0x6f0);
    CHECK((s->sregs.cr4 & 0x20) == 0x20);  // PAE
    CHECK(s->sregs.cr8 == 1);
    CHECK(s->sregs.efer == 0xd01);
    CHECK((s->sregs.efer & 0x500) == 0x500);  // LME and LMA
}

TEST_CASE("user_mode follows the CPL in cs", "[gdbstub]") {
    VcpuState s;
    s.sregs.cs.selector = 0x33;
    CHECK(s.user_mode());
    s.sregs.cs.selector = 0x10;
    CHECK_FALSE(s.user_mode());
}

TEST_CASE("decode errors", "[gdbstub]") {
    auto layout = qemu_layout();
    auto raw = recorded_g_packet();

    SECTION("a register file shorter than the layout") {
        auto r = GdbstubAccess::decode(layout, std::span(raw).first(200));
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
    SECTION("an empty register file") {
        auto r = GdbstubAccess::decode(layout, {});
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
    SECTION("a layout without a general register") {
        auto r = GdbstubAccess::decode(minimal_layout({"r12"}), raw);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
        CHECK(r.error().message().find("r12") != std::string::npos);
    }
    SECTION("a layout without a selector") {
        auto r = GdbstubAccess::decode(minimal_layout({"ss"}), raw);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
    SECTION("a layout without cr3") {
        auto r = GdbstubAccess::decode(minimal_layout({"cr3"}), raw);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
}

TEST_CASE("decode tolerates missing optional registers", "[gdbstub]") {
    auto layout = minimal_layout();
    std::vector<uint8_t> raw(layout.total_bytes(), 0);
    test::put_u64(raw, layout.find("rip")->offset, 0x401000);
    test::put_u32(raw, static_cast<size_t>(layout.find("cs")->offset), 0x33);
    test::put_u64(raw, layout.find("cr3")->offset, 0x1234000);
    REQUIRE(raw.size() == layout.total_bytes());

    auto s = GdbstubAccess::decode(layout, raw);
    REQUIRE(s.has_value());
    CHECK(s->regs.rip == 0x401000);
    CHECK(s->sregs.cs.selector == 0x33);
    CHECK(s->user_mode());
    CHECK(s->sregs.cr3 == 0x1234000);
    CHECK(s->sregs.cr0 == 0);
    CHECK(s->sregs.efer == 0);
    CHECK(s->sregs.fs.base == 0);
    CHECK(s->kernel_gs_base == 0);
}

TEST_CASE("encode_regs then decode round-trips kvm_regs", "[gdbstub]") {
    auto layout = qemu_layout();
    const auto original = recorded_g_packet();
    auto raw = original;

    kvm_regs regs{};
    regs.rax = 0x1111111111111111ULL;
    regs.rbx = 0x2222222222222222ULL;
    regs.rcx = 0x3333333333333333ULL;
    regs.rdx = 0x4444444444444444ULL;
    regs.rsi = 0x5555555555555555ULL;
    regs.rdi = 0x6666666666666666ULL;
    regs.rbp = 0x7777777777777777ULL;
    regs.rsp = 0x00007ffc12345678ULL;
    regs.r8 = 0x8888888888888888ULL;
    regs.r9 = 0x9999999999999999ULL;
    regs.r10 = 0xaaaaaaaaaaaaaaaaULL;
    regs.r11 = 0xbbbbbbbbbbbbbbbbULL;
    regs.r12 = 0xccccccccccccccccULL;
    regs.r13 = 0xddddddddddddddddULL;
    regs.r14 = 0xeeeeeeeeeeeeeeeeULL;
    regs.r15 = 0x0123456789abcdefULL;
    regs.rip = 0x00007f0011223344ULL;
    regs.rflags = 0x10202;  // eflags is 32 bits wide in QEMU's layout

    REQUIRE(GdbstubAccess::encode_regs(layout, regs, raw).has_value());
    auto s = GdbstubAccess::decode(layout, raw);
    REQUIRE(s.has_value());
    CHECK(std::memcmp(&s->regs, &regs, sizeof regs) == 0);
    CHECK(s->regs.rip == regs.rip);
    CHECK(s->regs.r15 == regs.r15);
    CHECK(s->regs.rflags == regs.rflags);

    // Everything past eflags (selectors, bases, control registers, FPU/SSE) is untouched.
    size_t after_eflags = layout.find("cs")->offset;
    REQUIRE(after_eflags == 140);
    CHECK(std::equal(raw.begin() + static_cast<std::ptrdiff_t>(after_eflags), raw.end(),
                     original.begin() + static_cast<std::ptrdiff_t>(after_eflags)));
    CHECK(s->sregs.cs.selector == 0x10);
    CHECK(s->sregs.cr3 == 0x17c44000ULL);
}

TEST_CASE("encode_regs never writes beyond a 32-bit eflags", "[gdbstub]") {
    auto layout = qemu_layout();
    const auto original = recorded_g_packet();
    auto raw = original;
    auto before = GdbstubAccess::decode(layout, raw);
    REQUIRE(before.has_value());

    kvm_regs regs = before->regs;
    regs.rflags = 0xffffffff00000202ULL;
    REQUIRE(GdbstubAccess::encode_regs(layout, regs, raw).has_value());
    auto after = GdbstubAccess::decode(layout, raw);
    REQUIRE(after.has_value());
    CHECK(after->regs.rflags == 0x202);
    CHECK(after->sregs.cs.selector == 0x10);
    CHECK(std::equal(raw.begin() + 140, raw.end(), original.begin() + 140));
}

TEST_CASE("encode_regs errors", "[gdbstub]") {
    kvm_regs regs{};
    SECTION("register file too small") {
        auto layout = qemu_layout();
        std::vector<uint8_t> raw(100, 0);
        auto r = GdbstubAccess::encode_regs(layout, regs, raw);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
    SECTION("layout without rip") {
        auto layout = minimal_layout({"rip"});
        std::vector<uint8_t> raw(layout.total_bytes(), 0);
        auto r = GdbstubAccess::encode_regs(layout, regs, raw);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
        CHECK(r.error().message().find("rip") != std::string::npos);
    }
}
