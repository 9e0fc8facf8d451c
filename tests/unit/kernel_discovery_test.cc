// redirector/kernel_discovery.h: the byte scanners on recorded Debian 6.1 kernel text (with
// and without page-table isolation), synthetic edge cases, and the whole discovery against
// an in-memory guest built from the same recordings.
#include "redirector/kernel_discovery.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>

#include "common/strings.h"
#include "tests/unit/test_helpers.h"

using namespace cloudvmi;

namespace {

struct KernelFixture {
    std::string dir;
    bool pti;
    std::map<std::string, uint64_t> meta;
    std::vector<uint8_t> idt, entry_page, entry_code, slow_path;
};

KernelFixture load_kernel(const std::string& dir, bool pti) {
    KernelFixture k{dir,
                    pti,
                    test::read_hex_meta(dir + "/meta.txt"),
                    test::read_bytes(dir + "/idt.bin"),
                    test::read_bytes(dir + "/entry_page.bin"),
                    test::read_bytes(dir + "/entry_code.bin"),
                    test::read_bytes(dir + "/slow_path.bin")};
    for (const char* key : {"entry_page", "entry", "sysret", "slow_return", "iret"}) {
        INFO(dir << ": " << key);
        REQUIRE(k.meta.count(key) == 1);
    }
    REQUIRE(k.idt.size() == 32 * 16);
    REQUIRE(k.entry_page.size() == 4096);
    REQUIRE(k.entry_code.size() == 0x600);
    REQUIRE(k.slow_path.size() == 0x400);
    return k;
}

std::vector<KernelFixture> both_kernels() {
    return {load_kernel("kernel-6.1.0-56-nopti", false), load_kernel("kernel-6.1.0-56-pti", true)};
}

// One IDT gate descriptor.
std::vector<uint8_t> gate(uint64_t handler, uint16_t selector = 0x10, uint8_t type_attr = 0x8e,
                          uint8_t ist = 0) {
    std::vector<uint8_t> g(16, 0);
    test::put_u16(g, 0, static_cast<uint16_t>(handler));
    test::put_u16(g, 2, selector);
    g[4] = ist;
    g[5] = type_attr;
    test::put_u16(g, 6, static_cast<uint16_t>(handler >> 16));
    test::put_u32(g, 8, static_cast<uint32_t>(handler >> 32));
    return g;
}

void append(std::vector<uint8_t>& to, const std::vector<uint8_t>& bytes) {
    to.insert(to.end(), bytes.begin(), bytes.end());
}

const std::vector<uint8_t> kSwapgsMov = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89, 0x24, 0x25};
const std::vector<uint8_t> kEndbr = {0xf3, 0x0f, 0x1e, 0xfa};
const std::vector<uint8_t> kSysret = {0x48, 0x0f, 0x07};
const std::vector<uint8_t> kMovRspCr3 = {0x0f, 0x22, 0xdc};

// jcc rel32 at `at` within `code` targeting `entry + target_offset` (code starts at entry).
std::vector<uint8_t> jne_rel32(size_t at, int64_t target_offset) {
    std::vector<uint8_t> j = {0x0f, 0x85, 0, 0, 0, 0};
    int32_t rel = static_cast<int32_t>(target_offset - static_cast<int64_t>(at + 6));
    std::memcpy(j.data() + 2, &rel, 4);
    return j;
}

// A stopped guest whose memory is a set of 4 KiB pages.
class FakeGuest final : public GuestAccess {
  public:
    std::map<uint64_t, std::vector<uint8_t>> pages;
    int reads = 0;

    void map_bytes(uint64_t va, const std::vector<uint8_t>& bytes) {
        for (size_t i = 0; i < bytes.size(); ++i) {
            auto& page = pages[(va + i) & ~uint64_t{0xfff}];
            page.resize(4096, 0);
            page[(va + i) & 0xfff] = bytes[i];
        }
    }

    std::string describe() const override { return "fake"; }
    bool running() const override { return false; }
    ErrorOr<void> resume() override { return unsupported(); }
    ErrorOr<StopEvent> wait_for_stop(Deadline) override { return unsupported(); }
    ErrorOr<StopEvent> interrupt(Deadline) override { return unsupported(); }
    ErrorOr<StopEvent> step(VcpuId, Deadline) override { return unsupported(); }
    ErrorOr<std::vector<VcpuId>> vcpus() override { return std::vector<VcpuId>{1}; }
    ErrorOr<RegisterSnapshot> snapshot(VcpuId) override { return unsupported(); }
    ErrorOr<void> restore(const RegisterSnapshot&) override { return unsupported(); }
    ErrorOr<void> write_regs(VcpuId, const kvm_regs&) override { return unsupported(); }
    ErrorOr<void> read_virtual(VcpuId, uint64_t va, std::span<uint8_t> out) override {
        ++reads;
        for (size_t i = 0; i < out.size(); ++i) {
            auto it = pages.find((va + i) & ~uint64_t{0xfff});
            if (it == pages.end()) return make_error(EFAULT, "unmapped");
            out[i] = it->second[(va + i) & 0xfff];
        }
        return {};
    }
    ErrorOr<void> write_virtual(VcpuId, uint64_t, std::span<const uint8_t>) override {
        return unsupported();
    }
    ErrorOr<void> read_physical(uint64_t, std::span<uint8_t>) override { return unsupported(); }
    ErrorOr<void> write_physical(uint64_t, std::span<const uint8_t>) override {
        return unsupported();
    }
    ErrorOr<void> insert_breakpoint(uint64_t) override { return unsupported(); }
    ErrorOr<void> remove_breakpoint(uint64_t) override { return unsupported(); }
    ErrorOr<void> detach() override { return {}; }
    RunControlCounters counters() const override { return {}; }

  private:
    static std::unexpected<Error> unsupported() { return make_error(ENOSYS, "not in the fake"); }
};

}  // namespace

TEST_CASE("fixtures are consistent with each other", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        uint64_t page = k.meta.at("entry_page");
        uint64_t entry = k.meta.at("entry");
        CHECK((page & 0xfff) == 0);
        REQUIRE(entry >= page);
        REQUIRE(entry - page + 0x600 <= 4096);
        CHECK(std::equal(k.entry_code.begin(), k.entry_code.end(),
                         k.entry_page.begin() + static_cast<std::ptrdiff_t>(entry - page)));
    }
}

TEST_CASE("parse_idt_handlers on recorded IDTs", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        auto handlers = parse_idt_handlers(k.idt);
        REQUIRE(handlers.size() == 32);
        uint64_t page = k.meta.at("entry_page");
        // #DE is the first gate; its handler sits in the entry page.
        CHECK(handlers[0] == page + 0x990);
        // #BP (vector 3) has DPL 3 and is still a kernel handler.
        CHECK(handlers[3] == page + 0xba0);
        CHECK(handlers[14] == page + 0xbe0);  // #PF
        for (uint64_t h : handlers)
            CHECK(h >= 0xffff800000000000ULL);
        // The lowest handler is what discovery scans around.
        uint64_t lowest = *std::min_element(handlers.begin(), handlers.end());
        CHECK((lowest & ~uint64_t{0xfff}) == page);
    }
}

TEST_CASE("parse_idt_handlers skips unusable gates", "[discovery]") {
    const uint64_t k1 = 0xffffffff81234567ULL;
    std::vector<uint8_t> idt;
    append(idt, gate(k1));                                    // kept: interrupt gate
    append(idt, gate(k1 + 0x10, 0x10, 0x8f));                 // kept: trap gate
    append(idt, gate(k1 + 0x20, 0x10, 0xee, 0));              // kept: DPL 3 interrupt gate
    append(idt, gate(k1 + 0x30, 0x10, 0x0e));                 // not present
    append(idt, gate(k1 + 0x40, 0x08));                       // wrong selector
    append(idt, gate(k1 + 0x50, 0x33));                       // user code selector
    append(idt, gate(0x00007fff12345678ULL));                 // user address
    append(idt, gate(k1 + 0x60, 0x10, 0x85));                 // task gate
    append(idt, gate(k1 + 0x70, 0x10, 0x8c));                 // call gate
    append(idt, std::vector<uint8_t>(16, 0));                 // empty slot
    append(idt, gate(0xffff800000000000ULL, 0x10, 0x8e, 3));  // kept: lowest kernel address
    idt.resize(idt.size() + 8, 0xff);                         // trailing partial gate
    auto handlers = parse_idt_handlers(idt);
    CHECK(handlers == std::vector<uint64_t>{k1, k1 + 0x10, k1 + 0x20, 0xffff800000000000ULL});

    CHECK(parse_idt_handlers({}).empty());
    CHECK(parse_idt_handlers(std::span(idt).first(15)).empty());
}

TEST_CASE("find_syscall_entry_pattern on recorded entry code", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        uint64_t page = k.meta.at("entry_page");
        uint64_t entry = k.meta.at("entry");
        CHECK(find_syscall_entry_pattern(k.entry_page) == std::optional<size_t>(entry - page));
        CHECK(find_syscall_entry_pattern(k.entry_code) == std::optional<size_t>(0));
        CHECK_FALSE(find_syscall_entry_pattern(k.slow_path).has_value());
    }
}

TEST_CASE("find_syscall_entry_pattern synthetic cases", "[discovery]") {
    std::vector<uint8_t> nops(5, 0x90);
    SECTION("plain pattern") {
        auto code = nops;
        append(code, nops);
        append(code, kSwapgsMov);
        append(code, {0x14, 0x60, 0x00, 0x00});
        CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(10));
    }
    SECTION("ENDBR64 right before the pattern is the entry point") {
        auto code = nops;
        append(code, kEndbr);
        append(code, kSwapgsMov);
        CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(5));
    }
    SECTION("ENDBR64 at the very start") {
        auto code = kEndbr;
        append(code, kSwapgsMov);
        CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(0));
    }
    SECTION("ENDBR64 not adjacent to the pattern is ignored") {
        auto code = kEndbr;
        code.push_back(0x90);
        append(code, kSwapgsMov);
        CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(5));
    }
    SECTION("pattern too close to the start for an ENDBR64") {
        std::vector<uint8_t> code = {0x1e, 0xfa};
        append(code, kSwapgsMov);
        CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(2));
    }
    SECTION("no pattern") {
        CHECK_FALSE(find_syscall_entry_pattern({}).has_value());
        CHECK_FALSE(find_syscall_entry_pattern(nops).has_value());
        // swapgs alone, or followed by another instruction.
        std::vector<uint8_t> swapgs_only = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x8b, 0x24, 0x25};
        CHECK_FALSE(find_syscall_entry_pattern(swapgs_only).has_value());
        // Cut one byte short at the end of the buffer.
        auto cut = nops;
        append(cut, std::vector<uint8_t>(kSwapgsMov.begin(), kSwapgsMov.end() - 1));
        CHECK_FALSE(find_syscall_entry_pattern(cut).has_value());
    }
}

TEST_CASE("find_return_paths on recorded entry code", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        uint64_t entry = k.meta.at("entry");
        auto paths = find_return_paths(k.entry_code, entry);
        REQUIRE(paths.has_value());
        CHECK(paths->sysret == k.meta.at("sysret"));
        CHECK(paths->slow_return == k.meta.at("slow_return"));
        CHECK(paths->pti == k.pti);
    }
}

TEST_CASE("find_iret on recorded slow paths", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        auto off = find_iret(k.slow_path);
        REQUIRE(off.has_value());
        CHECK(k.meta.at("slow_return") + *off == k.meta.at("iret"));
        CHECK(k.slow_path[*off] == 0x48);
        CHECK(k.slow_path[*off + 1] == 0xcf);
    }
}

TEST_CASE("find_iret synthetic cases", "[discovery]") {
    CHECK(find_iret(std::vector<uint8_t>{0x90, 0x90, 0x90, 0x48, 0xcf}) ==
          std::optional<size_t>(3));
    CHECK_FALSE(find_iret(std::vector<uint8_t>{0x90, 0xcf}).has_value());  // 32-bit iret
    CHECK_FALSE(find_iret(std::vector<uint8_t>{0x48}).has_value());
    CHECK_FALSE(find_iret({}).has_value());
}

TEST_CASE("find_return_paths synthetic cases", "[discovery]") {
    const uint64_t entry = 0xffffffff81000000ULL;

    SECTION("no sysretq") {
        std::vector<uint8_t> code(0x100, 0x90);
        CHECK_FALSE(find_return_paths(code, entry).has_value());
        CHECK_FALSE(find_return_paths({}, entry).has_value());
    }
    SECTION("majority jcc target outside the entry code is the slow path") {
        std::vector<uint8_t> code(0x80, 0x90);
        auto put = [&](size_t at, const std::vector<uint8_t>& bytes) {
            std::copy(bytes.begin(), bytes.end(), code.begin() + static_cast<std::ptrdiff_t>(at));
        };
        put(0x10, jne_rel32(0x10, 0x1000));  // slow path
        put(0x20, jne_rel32(0x20, 0x1000));
        put(0x30, jne_rel32(0x30, 0x2000));  // some other target, once
        put(0x40, jne_rel32(0x40, 0x50));    // forward within the entry code: ignored
        put(0x48, jne_rel32(0x48, 0x50));
        put(0x50, jne_rel32(0x50, 0x50));
        put(0x60, kSysret);
        put(0x68, jne_rel32(0x68, 0x3000));  // after the sysretq: not a sysret check
        put(0x70, jne_rel32(0x70, 0x3000));
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK(p->sysret == entry + 0x60);
        CHECK(p->slow_return == entry + 0x1000);
        CHECK_FALSE(p->pti);  // no CR3 write at all
    }
    SECTION("a jcc backwards out of the entry code counts") {
        std::vector<uint8_t> code(0x40, 0x90);
        auto j = jne_rel32(0x08, -0x200);
        std::copy(j.begin(), j.end(), code.begin() + 0x08);
        std::copy(kSysret.begin(), kSysret.end(), code.begin() + 0x20);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK(p->slow_return == entry - 0x200);
    }
    SECTION("no conditional jump out") {
        std::vector<uint8_t> code(0x40, 0x90);
        std::copy(kSysret.begin(), kSysret.end(), code.begin() + 0x30);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK(p->sysret == entry + 0x30);
        CHECK(p->slow_return == 0);
    }
    SECTION("CR3 switch executed: pti") {
        std::vector<uint8_t> code = kSwapgsMov;
        append(code, {0x14, 0x60, 0x00, 0x00});  // %gs:0x6014
        append(code, {0x66, 0x90});              // patched-in nop where the jmp was
        append(code, {0x0f, 0x20, 0xdc});        // mov %cr3,%rsp
        append(code, {0x48, 0x81, 0xe4, 0xff, 0xe7, 0xff, 0xff});
        append(code, kMovRspCr3);
        code.resize(0x30, 0x90);
        append(code, kSysret);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK(p->pti);
        CHECK(p->sysret == entry + 0x30);
    }
    SECTION("CR3 switch jumped over: no pti") {
        std::vector<uint8_t> code = kSwapgsMov;
        append(code, {0x14, 0x60, 0x00, 0x00});
        append(code, {0xeb, 0x12});  // jmp over the switch
        append(code, {0x0f, 0x20, 0xdc});
        append(code, {0x0f, 0x1f, 0x44, 0x00, 0x00});
        append(code, {0x48, 0x81, 0xe4, 0xff, 0xe7, 0xff, 0xff});
        append(code, kMovRspCr3);
        code.resize(0x30, 0x90);
        append(code, kSysret);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK_FALSE(p->pti);
    }
    SECTION("a short jump that lands before the CR3 write does not count") {
        std::vector<uint8_t> code = kSwapgsMov;
        append(code, {0x14, 0x60, 0x00, 0x00});
        append(code, {0xeb, 0x00});  // jmp to the next instruction
        append(code, {0x0f, 0x20, 0xdc});
        append(code, kMovRspCr3);
        code.resize(0x30, 0x90);
        append(code, kSysret);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK(p->pti);
    }
    SECTION("a CR3 write beyond the first 0x40 bytes is not the entry switch") {
        std::vector<uint8_t> code(0x50, 0x90);
        std::copy(kMovRspCr3.begin(), kMovRspCr3.end(), code.begin() + 0x44);
        append(code, kSysret);
        auto p = find_return_paths(code, entry);
        REQUIRE(p.has_value());
        CHECK_FALSE(p->pti);
    }
}

TEST_CASE("discover_kernel_entry_points on an in-memory guest", "[discovery]") {
    for (const auto& k : both_kernels()) {
        INFO(k.dir);
        FakeGuest guest;
        uint64_t page = k.meta.at("entry_page");
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(page, k.entry_page);
        guest.map_bytes(page + 0x1000, std::vector<uint8_t>(0x1000, 0xcc));
        guest.map_bytes(k.meta.at("slow_return"), k.slow_path);

        auto kep = discover_kernel_entry_points(guest, 1);
        REQUIRE(kep.has_value());
        CHECK(kep->syscall_entry == k.meta.at("entry"));
        CHECK(kep->sysret == k.meta.at("sysret"));
        CHECK(kep->slow_return == k.meta.at("slow_return"));
        CHECK(kep->iret == k.meta.at("iret"));
        CHECK(kep->pti == k.pti);
        CHECK(kep->idt_base == kLinuxIdtAddress);
        CHECK(kep->describe().find(hex_u64(k.meta.at("entry"))) != std::string::npos);
    }
}

TEST_CASE("discover_kernel_entry_points rejects unknown guests", "[discovery]") {
    auto k = load_kernel("kernel-6.1.0-56-nopti", false);
    uint64_t page = k.meta.at("entry_page");

    SECTION("no IDT at the fixed address") {
        FakeGuest guest;
        guest.map_bytes(page, k.entry_page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
    }
    SECTION("too few valid gates") {
        FakeGuest guest;
        auto idt = k.idt;
        for (size_t i = 8; i < 32; ++i)
            idt[i * 16 + 5] &= 0x7f;  // clear present bits
        guest.map_bytes(kLinuxIdtAddress, idt);
        guest.map_bytes(page, k.entry_page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
    }
    SECTION("no syscall entry near the handlers") {
        FakeGuest guest;
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(page, std::vector<uint8_t>(0x2000, 0xcc));
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
    }
    SECTION("no iretq on the slow path is not fatal") {
        FakeGuest guest;
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(page, k.entry_page);
        guest.map_bytes(page + 0x1000, std::vector<uint8_t>(0x1000, 0xcc));
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE(r.has_value());
        CHECK(r->syscall_entry == k.meta.at("entry"));
        CHECK(r->slow_return == k.meta.at("slow_return"));
        CHECK(r->iret == 0);
    }
}
