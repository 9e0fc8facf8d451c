// redirector/inject/kernel_discovery.h: the byte scanners on the entry text recorded from real
// Debian kernels (5.10, 6.1, 6.12, 7.2, each with and without page-table isolation; see
// tests/integration/kernel_text_record.cc), synthetic edge cases, the whole discovery
// against an in-memory guest built from the same recordings, and its failure reports.
#include "redirector/inject/kernel_discovery.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <map>

#include "common/log.h"
#include "common/strings.h"
#include "tests/unit/temp_dir.h"
#include "tests/unit/test_helpers.h"

using namespace cloudvmi;

namespace {

struct KernelFixture {
    std::string dir;
    bool pti;
    std::map<std::string, uint64_t> meta;
    std::vector<uint8_t> idt, handlers_page, entry_page, entry_code, slow_path;
    uint64_t handlers_page_address = 0;
};

// tests/data/kernel-<version>-{pti,nopti}/: idt.bin, entry_page.bin, entry_code.bin,
// slow_path.bin, meta.txt, and (recordings since 5.10/6.12/7.2) handlers_page.bin when the
// lowest exception handler is not on the entry's page.
KernelFixture load_kernel(const std::string& dir, bool pti) {
    KernelFixture k{dir,
                    pti,
                    test::read_hex_meta(dir + "/meta.txt"),
                    test::read_bytes(dir + "/idt.bin"),
                    {},
                    test::read_bytes(dir + "/entry_page.bin"),
                    test::read_bytes(dir + "/entry_code.bin"),
                    test::read_bytes(dir + "/slow_path.bin")};
    for (const char* key : {"entry_page", "entry", "sysret", "slow_return", "iret"}) {
        INFO(dir << ": " << key);
        REQUIRE(k.meta.count(key) == 1);
    }
    if (k.meta.count("pti")) REQUIRE(k.meta.at("pti") == (pti ? 1u : 0u));
    k.handlers_page_address =
        k.meta.count("handlers_page") ? k.meta.at("handlers_page") : k.meta.at("entry_page");
    k.handlers_page = k.handlers_page_address == k.meta.at("entry_page")
                          ? k.entry_page
                          : test::read_bytes(dir + "/handlers_page.bin");
    REQUIRE(k.idt.size() == 32 * 16);
    REQUIRE(k.handlers_page.size() == 4096);
    REQUIRE(k.entry_page.size() == 4096);
    REQUIRE(k.entry_code.size() == kEntryCodeWindow);
    REQUIRE(k.slow_path.size() == kSlowPathWindow);
    return k;
}

std::vector<KernelFixture> both_kernels() {
    return {load_kernel("kernel-6.1.0-56-nopti", false), load_kernel("kernel-6.1.0-56-pti", true)};
}

// Every recorded kernel: Debian 11 (5.10), 12 (6.1), 13 (6.12) and unstable (7.2).
const std::vector<std::string> kKernelVersions = {"5.10.0-46", "6.1.0-56", "6.12.118+deb13",
                                                  "7.2.13+deb14"};
std::vector<KernelFixture> all_kernels() {
    std::vector<KernelFixture> all;
    for (const auto& v : kKernelVersions) {
        all.push_back(load_kernel("kernel-" + v + "-nopti", false));
        all.push_back(load_kernel("kernel-" + v + "-pti", true));
    }
    return all;
}

// Sends warn-level log lines to a file for the life of the object.
class LogCapture {
  public:
    LogCapture() : saved_(log::level()) {
        log::set_output_file(dir_.file("log"));
        if (!log::enabled(log::Level::kWarn)) log::set_level(log::Level::kWarn);
    }
    ~LogCapture() {
        log::set_level(saved_);
        log::set_output_file(std::getenv("CLOUDVMI_LOG") ? "" : "/dev/null");
    }
    std::string text() const { return test::read_file(dir_.file("log")); }

  private:
    test::TempDir dir_{"cloudvmi-discovery-log"};
    log::Level saved_;
};

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

// swapgs; mov %rsp,%gs:0x6014 (5.10, 6.1: absolute through a SIB byte)
const std::vector<uint8_t> kSwapgsMov = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89,
                                         0x24, 0x25, 0x14, 0x60, 0x00, 0x00};
// swapgs; mov %rsp,%gs:0x6e005f85(%rip) (6.12 and later)
const std::vector<uint8_t> kSwapgsMovRip = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x89,
                                            0x25, 0x85, 0x5f, 0x00, 0x6e};
const std::vector<uint8_t> kSwapgs = {0x0f, 0x01, 0xf8};
const std::vector<uint8_t> kVerwRip = {0x0f, 0x00, 0x2d, 0x78, 0xfe, 0xff, 0xff};
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
    void before_next_resume(std::function<void()>) override {}  // never resumes
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
    for (const auto& k : all_kernels()) {
        INFO(k.dir);
        uint64_t page = k.meta.at("entry_page");
        uint64_t entry = k.meta.at("entry");
        CHECK((page & 0xfff) == 0);
        REQUIRE(entry >= page);
        REQUIRE(entry - page + 0x600 <= 4096);
        CHECK(std::equal(k.entry_code.begin(), k.entry_code.end(),
                         k.entry_page.begin() + static_cast<std::ptrdiff_t>(entry - page)));
        // The lowest exception handler is on the recorded handlers' page.
        auto handlers = parse_idt_handlers(k.idt);
        REQUIRE(handlers.size() >= 16);
        uint64_t lowest = *std::min_element(handlers.begin(), handlers.end());
        CHECK((lowest & ~uint64_t{0xfff}) == k.handlers_page_address);
        // What the slow path's recording shares with the pages recorded is the same bytes.
        uint64_t slow = k.meta.at("slow_return");
        if ((slow & ~uint64_t{0xfff}) == k.handlers_page_address) {
            size_t off = slow & 0xfff;
            size_t n = std::min<size_t>(k.slow_path.size(), 4096 - off);
            CHECK(std::equal(k.slow_path.begin(), k.slow_path.begin() + static_cast<long>(n),
                             k.handlers_page.begin() + static_cast<long>(off)));
        }
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
    for (const auto& k : all_kernels()) {
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
        std::vector<uint8_t> swapgs_only = {0x0f, 0x01, 0xf8, 0x65, 0x48, 0x8b,
                                            0x24, 0x25, 0x14, 0x60, 0x00, 0x00};
        CHECK_FALSE(find_syscall_entry_pattern(swapgs_only).has_value());
        // Cut one byte short at the end of the buffer, in either encoding.
        for (const auto& form : {kSwapgsMov, kSwapgsMovRip}) {
            auto cut = nops;
            append(cut, std::vector<uint8_t>(form.begin(), form.end() - 1));
            CHECK_FALSE(find_syscall_entry_pattern(cut).has_value());
        }
    }
}

TEST_CASE("find_return_paths on recorded entry code", "[discovery]") {
    for (const auto& k : all_kernels()) {
        INFO(k.dir);
        uint64_t entry = k.meta.at("entry");
        auto paths = find_return_paths(k.entry_code, entry);
        REQUIRE(paths.has_value());
        CHECK(paths->sysret == k.meta.at("sysret"));
        CHECK(paths->sysret_by_structure);
        CHECK(paths->slow_return == k.meta.at("slow_return"));
        CHECK(paths->pti == k.pti);
    }
}

TEST_CASE("find_iret on recorded slow paths", "[discovery]") {
    for (const auto& k : all_kernels()) {
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
        // A swapgs (and what may follow it) cut off by the end of the code (found by fuzzing).
        CHECK_FALSE(find_return_paths(kSwapgs, entry).has_value());
        CHECK_FALSE(find_return_paths(std::vector<uint8_t>{0x0f, 0x01, 0xf8, 0xeb}, entry));
        CHECK_FALSE(find_return_paths(std::vector<uint8_t>{0x0f, 0x01, 0xf8, 0x66, 0x90}, entry));
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
        std::vector<uint8_t> code = kSwapgsMov;  // %gs:0x6014
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
    for (const auto& k : all_kernels()) {
        INFO(k.dir);
        FakeGuest guest;
        uint64_t page = k.meta.at("entry_page");
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(page + 0x1000, std::vector<uint8_t>(0x1000, 0xcc));
        guest.map_bytes(k.handlers_page_address, k.handlers_page);
        guest.map_bytes(page, k.entry_page);
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

// --- one test per recorded kernel: what discovery must see in each ---

namespace {

struct KernelShape {
    std::string version;
    bool endbr;                      // entry reached through an ENDBR64 (IBT build)
    bool rip_relative;               // per-CPU slot RIP-relative rather than abs32
    bool verw_pti, verw_nopti;       // verw executed between the fast return's swapgs and
                                     // sysretq, with and without PTI
    int64_t entry_page_vs_handlers;  // entry's page minus the lowest handler's page
};

// Feeds one kernel's recorded bytes (with and without PTI) to each scanner, then to the
// whole discovery on a guest that maps only what was recorded (as user page tables with
// PTI map only the entry text).
void check_recorded_kernel(const KernelShape& shape) {
    for (bool pti : {false, true}) {
        auto k = load_kernel("kernel-" + shape.version + (pti ? "-pti" : "-nopti"), pti);
        INFO(k.dir);
        uint64_t entry = k.meta.at("entry");
        uint64_t entry_page = k.meta.at("entry_page");
        CHECK(static_cast<int64_t>(entry_page - k.handlers_page_address) ==
              shape.entry_page_vs_handlers);

        // Step 2: exactly one candidate on the entry's page, of the expected form.
        auto candidates = find_syscall_entry_candidates(k.entry_page);
        REQUIRE(candidates.size() == 1);
        const auto& c = candidates.front();
        CHECK(c.entry == entry - entry_page);
        CHECK(c.endbr == shape.endbr);
        CHECK(c.swapgs == c.entry + (shape.endbr ? 4 : 0));
        CHECK(c.rip_relative == shape.rip_relative);
        auto store = decode_percpu_rsp_store(k.entry_page, c.swapgs + 3);
        REQUIRE(store.has_value());
        CHECK(store->length == (shape.rip_relative ? 8u : 9u));
        CHECK(c.after_store == c.swapgs + 3 + store->length);
        if (k.handlers_page_address != entry_page) {
            CHECK(find_syscall_entry_candidates(k.handlers_page).empty());
        }
        // Step 4: the CR3 switch right after the store, executed or jumped over.
        CHECK(detect_pti(k.entry_code, c.after_store - c.entry) == pti);

        // Step 3 (and 5): the fast return by structure, the slow path, its iretq.
        auto paths = find_return_paths(k.entry_code, entry);
        REQUIRE(paths.has_value());
        CHECK(paths->sysret == k.meta.at("sysret"));
        CHECK(paths->sysret_by_structure);
        CHECK(paths->verw == (pti ? shape.verw_pti : shape.verw_nopti));
        CHECK(paths->pti == pti);
        CHECK(paths->slow_return == k.meta.at("slow_return"));
        auto iret = find_iret(k.slow_path);
        REQUIRE(iret.has_value());
        CHECK(k.meta.at("slow_return") + *iret == k.meta.at("iret"));

        // The whole discovery, on only the recorded pages.
        FakeGuest guest;
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(k.handlers_page_address, k.handlers_page);
        guest.map_bytes(entry_page, k.entry_page);
        guest.map_bytes(k.meta.at("slow_return"), k.slow_path);
        auto kep = discover_kernel_entry_points(guest, 1);
        INFO((kep ? kep->describe() : kep.error().describe()));
        REQUIRE(kep.has_value());
        CHECK(kep->syscall_entry == entry);
        CHECK(kep->sysret == k.meta.at("sysret"));
        CHECK(kep->slow_return == k.meta.at("slow_return"));
        CHECK(kep->iret == k.meta.at("iret"));
        CHECK(kep->pti == pti);
        CHECK(kep->endbr == shape.endbr);
        CHECK(kep->rip_relative == shape.rip_relative);
        CHECK(kep->verw == (pti ? shape.verw_pti : shape.verw_nopti));
    }
}

}  // namespace

TEST_CASE("Debian 11 kernel 5.10.0-46: swapgs; mov %rsp,%gs:abs32", "[discovery][kernel]") {
    check_recorded_kernel({"5.10.0-46", false, false, true, true, 0});
}

TEST_CASE("Debian 12 kernel 6.1.0-56: swapgs; mov %rsp,%gs:abs32", "[discovery][kernel]") {
    // Without PTI the verw is jumped over (its alternative was not patched in).
    check_recorded_kernel({"6.1.0-56", false, false, true, false, 0});
}

TEST_CASE("Debian 13 kernel 6.12.118: ENDBR64 and a RIP-relative per-CPU store",
          "[discovery][kernel]") {
    // Its entry sits a page below the exception handlers.
    check_recorded_kernel({"6.12.118+deb13", true, true, true, true, -0x1000});
}

TEST_CASE("Debian unstable kernel 7.2.13: ENDBR64 and a RIP-relative per-CPU store",
          "[discovery][kernel]") {
    check_recorded_kernel({"7.2.13+deb14", true, true, true, true, -0x1000});
}

// --- the instruction-level pieces, on synthetic code ---

TEST_CASE("decode_percpu_rsp_store accepts every encoding of mov %rsp,%gs:slot", "[discovery]") {
    using V = std::vector<uint8_t>;
    auto len = [](const V& code) -> std::optional<size_t> {
        auto s = decode_percpu_rsp_store(code, 0);
        if (!s) return std::nullopt;
        return s->length;
    };
    auto rip = [](const V& code) { return decode_percpu_rsp_store(code, 0)->rip_relative; };
    // 5.10/6.1: %gs:abs32 through a SIB byte with no base and no index.
    V abs32 = {0x65, 0x48, 0x89, 0x24, 0x25, 0x14, 0x60, 0x00, 0x00};
    CHECK(len(abs32) == 9u);
    CHECK_FALSE(rip(abs32));
    // 6.12+: %gs:rel32(%rip).
    V rel32 = {0x65, 0x48, 0x89, 0x25, 0x85, 0x5f, 0x00, 0x6e};
    CHECK(len(rel32) == 8u);
    CHECK(rip(rel32));
    // Other prefixes before %gs, REX.B/REX.X set where they do not matter.
    CHECK(len({0x3e, 0x65, 0x48, 0x89, 0x25, 1, 2, 3, 4}) == 9u);
    CHECK(len({0x65, 0x49, 0x89, 0x25, 1, 2, 3, 4}) == 8u);
    CHECK(len({0x65, 0x49, 0x89, 0x24, 0x25, 1, 2, 3, 4}) == 9u);

    CHECK_FALSE(len({0x48, 0x89, 0x24, 0x25, 1, 2, 3, 4}));        // no %gs
    CHECK_FALSE(len({0x65, 0x2e, 0x48, 0x89, 0x25, 1, 2, 3, 4}));  // %cs overrides it
    CHECK_FALSE(len({0x66, 0x65, 0x48, 0x89, 0x25, 1, 2, 3, 4}));  // operand size
    CHECK_FALSE(len({0x65, 0x40, 0x89, 0x25, 1, 2, 3, 4}));        // no REX.W: 32-bit
    CHECK_FALSE(len({0x65, 0x89, 0x25, 1, 2, 3, 4}));              // no REX at all
    CHECK_FALSE(len({0x65, 0x4c, 0x89, 0x25, 1, 2, 3, 4}));        // REX.R: %r12
    CHECK_FALSE(len({0x65, 0x48, 0x8b, 0x25, 1, 2, 3, 4}));        // a load, not a store
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x1d, 1, 2, 3, 4}));        // %rbx
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x20}));                    // (%rax): a base register
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x64, 0x24, 0x08}));        // 8(%rsp)
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0xa5, 1, 2, 3, 4}));        // disp32(%rbp)
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x24, 0x05, 1, 2, 3, 4}));  // %gs:(,%rax,1)+abs32
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x24, 0x24}));              // (%rsp)
    CHECK_FALSE(len({0x65, 0x4a, 0x89, 0x24, 0x25, 1, 2, 3, 4}));  // REX.X: %r12 index
    CHECK_FALSE(len({0x65, 0x48, 0x89, 0x25, 1, 2, 3}));           // cut short
    CHECK_FALSE(len({}));
    CHECK_FALSE(decode_percpu_rsp_store(rel32, rel32.size()).has_value());
}

TEST_CASE("filler_length and verw_length", "[discovery]") {
    using V = std::vector<uint8_t>;
    CHECK(filler_length(V{0x90}, 0) == 1);
    CHECK(filler_length(V{0x66, 0x90}, 0) == 2);                    // xchg %ax,%ax
    CHECK(filler_length(V{0x0f, 0x1f, 0x00}, 0) == 3);              // nopl (%rax)
    CHECK(filler_length(V{0x0f, 0x1f, 0x40, 0x00}, 0) == 4);        // nopl 0(%rax)
    CHECK(filler_length(V{0x0f, 0x1f, 0x44, 0x00, 0x00}, 0) == 5);  // nopl 0(%rax,%rax)
    CHECK(filler_length(V{0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00}, 0) == 6);
    CHECK(filler_length(V{0x0f, 0x1f, 0x80, 0, 0, 0, 0}, 0) == 7);  // nopl 0L(%rax)
    CHECK(filler_length(V{0x66, 0x66, 0x2e, 0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0}, 0) == 11);
    CHECK(filler_length(V{0x0f, 0x1f, 0x44, 0x00}, 0) == 0);  // cut short
    CHECK(filler_length(V{0x0f, 0x1f, 0x48, 0x00}, 0) == 0);  // /1 is not a nop
    CHECK(filler_length(V{0x0f, 0x01, 0xf8}, 0) == 0);        // swapgs
    CHECK(filler_length(V{0x48, 0x0f, 0x07}, 0) == 0);        // sysretq
    CHECK(filler_length(V{}, 0) == 0);
    CHECK(filler_length(V{0x90}, 1) == 0);

    CHECK(verw_length(kVerwRip, 0) == 7);                               // verw rel32(%rip)
    CHECK(verw_length(V{0x0f, 0x00, 0x2c, 0x25, 1, 2, 3, 4}, 0) == 8);  // verw abs32
    CHECK(verw_length(V{0x3e, 0x0f, 0x00, 0x2d, 1, 2, 3, 4}, 0) == 8);  // %ds prefix
    CHECK(verw_length(V{0x0f, 0x00, 0xe8}, 0) == 3);                    // verw %ax
    CHECK(verw_length(V{0x0f, 0x00, 0x25, 1, 2, 3, 4}, 0) == 0);        // verr, not verw
    CHECK(verw_length(V{0x0f, 0x00, 0x2d, 1, 2, 3}, 0) == 0);           // cut short
    CHECK(verw_length(V{}, 0) == 0);
}

TEST_CASE("find_syscall_entry_candidates on synthetic code", "[discovery]") {
    std::vector<uint8_t> code(3, 0x90);
    append(code, kSwapgs);
    append(code, {0x0f, 0x1f, 0x00});  // a swapgs followed by something else: not a candidate
    append(code, kEndbr);
    append(code, kSwapgsMovRip);  // at 13
    append(code, {0x66, 0x90});
    append(code, kSwapgsMov);  // at 26
    auto all = find_syscall_entry_candidates(code);
    REQUIRE(all.size() == 2);
    CHECK(all[0].entry == 9);
    CHECK(all[0].swapgs == 13);
    CHECK(all[0].endbr);
    CHECK(all[0].rip_relative);
    CHECK(all[0].after_store == 13 + kSwapgsMovRip.size());
    CHECK(all[1].entry == 26);
    CHECK_FALSE(all[1].endbr);
    CHECK_FALSE(all[1].rip_relative);
    CHECK(all[1].after_store == 26 + kSwapgsMov.size());
    CHECK(find_syscall_entry_pattern(code) == std::optional<size_t>(9));
}

TEST_CASE("detect_pti reads the CR3 switch after a store of any length", "[discovery]") {
    // SWITCH_TO_KERNEL_CR3 after the entry's store; `head` is what stands where the jump
    // over it was (kept without PTI, patched into a nop with PTI).
    auto entry_with = [](const std::vector<uint8_t>& prologue, const std::vector<uint8_t>& head) {
        std::vector<uint8_t> code = prologue;
        append(code, head);
        append(code, {0x0f, 0x20, 0xdc});                          // mov %cr3,%rsp
        append(code, {0x0f, 0x1f, 0x44, 0x00, 0x00});              // nop (PCID alternative)
        append(code, {0x48, 0x81, 0xe4, 0xff, 0xe7, 0xff, 0xff});  // and $~0x1800,%rsp
        append(code, kMovRspCr3);
        code.resize(0x40, 0x90);
        return code;
    };
    std::vector<uint8_t> ibt_rip = kEndbr;  // 6.12+: 4 + 3 + 8 = 15 bytes before the switch
    append(ibt_rip, kSwapgsMovRip);
    for (const auto& prologue : {kSwapgsMov, kSwapgsMovRip, ibt_rip}) {
        INFO("prologue of " << prologue.size() << " bytes");
        auto cands = find_syscall_entry_candidates(prologue);
        REQUIRE(cands.size() == 1);
        size_t after = cands[0].after_store;
        CHECK(after == prologue.size());
        auto with_pti = entry_with(prologue, {0x66, 0x90});
        auto without = entry_with(prologue, {0xeb, 0x12});  // jmp past the CR3 write
        CHECK(detect_pti(with_pti, after));
        CHECK_FALSE(detect_pti(without, after));
        // A rel32 jump over it is as good as a short one.
        auto far = entry_with(prologue, {0xe9, 0x12, 0x00, 0x00, 0x00});
        CHECK_FALSE(detect_pti(far, after));
    }
    // The old fixed 12-byte assumption read the jump's displacement as an opcode here.
    auto without = entry_with(ibt_rip, {0xeb, 0x12});
    without.resize(0x60, 0x90);
    append(without, kSwapgs);
    append(without, kSysret);
    auto p = find_return_paths(without, 0xffffffff81000000ULL);
    REQUIRE(p.has_value());
    CHECK_FALSE(p->pti);
    CHECK(detect_pti({}, 0) == false);
    CHECK(detect_pti(without, without.size()) == false);
}

TEST_CASE("find_return_paths prefers a structural sysretq", "[discovery]") {
    const uint64_t entry = 0xffffffff81000000ULL;
    std::vector<uint8_t> code = kEndbr;
    append(code, kSwapgsMovRip);
    // movabs $0x..070f48.., %rax: the bytes of sysretq inside another instruction
    append(code, {0x48, 0xb8, 0x11, 0x48, 0x0f, 0x07, 0x22, 0x33, 0x44, 0x55});
    append(code, kSwapgs);  // a swapgs not followed by sysretq (paranoid exit, say)
    append(code, {0x5f});
    size_t fast = code.size();
    append(code, kSwapgs);
    append(code, {0x66, 0x90});
    append(code, kVerwRip);
    append(code, {0x0f, 0x1f, 0x00});
    size_t sysret = code.size();
    append(code, kSysret);
    append(code, {0xcc});
    auto p = find_return_paths(code, entry);
    REQUIRE(p.has_value());
    CHECK(p->sysret == entry + sysret);
    CHECK(p->sysret_by_structure);
    CHECK(p->verw);
    CHECK(fast < sysret);

    SECTION("without verw") {
        std::vector<uint8_t> plain = kSwapgsMov;
        append(plain, kSwapgs);
        append(plain, kSysret);
        auto q = find_return_paths(plain, entry);
        REQUIRE(q.has_value());
        CHECK(q->sysret == entry + kSwapgsMov.size() + 3);
        CHECK(q->sysret_by_structure);
        CHECK_FALSE(q->verw);
    }
    SECTION("a verw jumped over (alternative not patched in)") {
        std::vector<uint8_t> skipped = kSwapgsMov;
        append(skipped, kSwapgs);
        append(skipped, {0xeb, 0x07});
        append(skipped, kVerwRip);
        append(skipped, kSysret);
        auto q = find_return_paths(skipped, entry);
        REQUIRE(q.has_value());
        CHECK(q->sysret == entry + skipped.size() - 3);
        CHECK(q->sysret_by_structure);
        CHECK_FALSE(q->verw);
        // A jump elsewhere is not part of the sequence.
        skipped[kSwapgsMov.size() + 4] = 0x40;
        auto far = find_return_paths(skipped, entry);
        REQUIRE(far.has_value());
        CHECK_FALSE(far->sysret_by_structure);
    }
    SECTION("only the bytes: the first 48 0f 07, marked as such") {
        std::vector<uint8_t> bytes_only = kSwapgsMovRip;
        append(bytes_only, {0x90, 0x90});
        append(bytes_only, kSysret);
        auto q = find_return_paths(bytes_only, entry);
        REQUIRE(q.has_value());
        CHECK(q->sysret == entry + kSwapgsMovRip.size() + 2);
        CHECK_FALSE(q->sysret_by_structure);
    }
    SECTION("a jcc far outside .entry.text is not the slow path") {
        std::vector<uint8_t> with_jumps = kSwapgsMov;
        size_t at = with_jumps.size();
        append(with_jumps, jne_rel32(at, 0x200000));
        append(with_jumps, jne_rel32(at + 6, 0x200000));
        append(with_jumps, jne_rel32(at + 12, -0x800));
        append(with_jumps, kSwapgs);
        append(with_jumps, kSysret);
        auto q = find_return_paths(with_jumps, entry);
        REQUIRE(q.has_value());
        CHECK(q->slow_return == entry - 0x800);
    }
}

// --- discovery's reports when a kernel does not fit ---

TEST_CASE("discovery says which step failed and logs the bytes it looked at", "[discovery]") {
    auto k = load_kernel("kernel-6.12.118+deb13-pti", true);
    uint64_t entry = k.meta.at("entry");
    uint64_t entry_page = k.meta.at("entry_page");
    size_t at = entry - entry_page;
    auto map_kernel = [&](FakeGuest& guest, const std::vector<uint8_t>& idt,
                          const std::vector<uint8_t>& page) {
        guest.map_bytes(kLinuxIdtAddress, idt);
        guest.map_bytes(k.handlers_page_address, k.handlers_page);
        guest.map_bytes(entry_page, page);
    };

    SECTION("step 1: too few gates; the IDT is dumped") {
        LogCapture log;
        FakeGuest guest;
        auto idt = k.idt;
        for (size_t i = 4; i < 32; ++i)
            idt[i * 16 + 5] &= 0x7f;
        map_kernel(guest, idt, k.entry_page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
        CHECK_THAT(r.error().describe(),
                   Catch::Contains("step 1 (IDT)") && Catch::Contains("only 4 of 32"));
        auto text = log.text();
        CHECK_THAT(text, Catch::Contains("the IDT, 512 bytes at 0xfffffe0000000000"));
        CHECK_THAT(text, Catch::Contains("0xfffffe0000000000: "));
    }
    SECTION("step 2: swapgs sites but no store of %rsp; they are dumped") {
        LogCapture log;
        FakeGuest guest;
        auto page = k.entry_page;
        page[at + 4 + 3 + 2] = 0x8b;  // mov %gs:slot,%rsp: a load
        map_kernel(guest, k.idt, page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
        auto msg = r.error().describe();
        CHECK_THAT(msg, Catch::Contains("step 2 (syscall entry)") &&
                            Catch::Contains("none followed by a store of %rsp") &&
                            Catch::Contains("128 KiB") && Catch::Contains("2 pages read") &&
                            Catch::Contains("the most entry-like at " + hex_u64(entry + 4) +
                                            ": 0f 01 f8 65 48 8b 25"));
        auto text = log.text();
        CHECK_THAT(text, Catch::Contains("a swapgs and what follows"));
        CHECK_THAT(text, Catch::Contains("0f 01 f8 65 48 8b 25"));
        CHECK_THAT(text, Catch::Contains("the IDT"));
        // Bounded: the IDT, and 32 bytes per swapgs for at most 16 of them.
        CHECK(std::count(text.begin(), text.end(), '\n') < 16 + 17 + 2 * 16 + 4);
    }
    SECTION("step 2: no swapgs at all") {
        FakeGuest guest;
        guest.map_bytes(kLinuxIdtAddress, k.idt);
        guest.map_bytes(k.handlers_page_address, std::vector<uint8_t>(0x1000, 0xcc));
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK_THAT(r.error().describe(),
                   Catch::Contains("step 2") && Catch::Contains("no swapgs at all"));
    }
    SECTION("step 3: a candidate without sysretq; its code is dumped") {
        LogCapture log;
        FakeGuest guest;
        auto page = k.entry_page;
        uint64_t sysret_off = k.meta.at("sysret") - entry_page;
        page[sysret_off] = 0xcc;  // 48 0f 07 -> cc 0f 07
        map_kernel(guest, k.idt, page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == ENOTSUP);
        auto msg = r.error().describe();
        CHECK_THAT(msg, Catch::Contains("step 3 (fast return)") &&
                            Catch::Contains(hex_u64(entry)) &&
                            Catch::Contains("endbr64; swapgs; mov %rsp,%gs:rel32(%rip)") &&
                            Catch::Contains("no sysretq"));
        auto text = log.text();
        CHECK_THAT(text, Catch::Contains("the first candidate's code"));
        CHECK_THAT(text, Catch::Contains(hex_u64(entry) + ": f3 0f 1e fa 0f 01 f8 65 48 89 25"));
    }
    SECTION("a sysretq not after a swapgs is used, with a warning") {
        LogCapture log;
        FakeGuest guest;
        auto page = k.entry_page;
        uint64_t sysret_off = k.meta.at("sysret") - entry_page;
        // swapgs; verw; sysretq -> nop; nop; nop; verw; sysretq
        REQUIRE(page[sysret_off - 10] == 0x0f);
        page[sysret_off - 10] = page[sysret_off - 9] = page[sysret_off - 8] = 0x90;
        map_kernel(guest, k.idt, page);
        auto r = discover_kernel_entry_points(guest, 1);
        REQUIRE(r.has_value());
        CHECK(r->syscall_entry == entry);
        CHECK(r->sysret == k.meta.at("sysret"));
        CHECK_THAT(log.text(), Catch::Contains("using the first sysretq bytes"));
    }
}

TEST_CASE("discovery sees an entry that straddles a page boundary", "[discovery]") {
    // The ENDBR64 ends one page, the swapgs and the store begin the next.
    const uint64_t handlers = 0xffffffff81a00800ULL;
    std::vector<uint8_t> idt;
    for (int i = 0; i < 32; ++i)
        append(idt, gate(handlers + static_cast<uint64_t>(i) * 0x20));
    const uint64_t entry = 0xffffffff81a01ffcULL;
    std::vector<uint8_t> code = kEndbr;
    append(code, kSwapgsMovRip);
    append(code, {0xeb, 0x12});  // no PTI
    code.resize(0x80, 0x90);
    size_t sysret = code.size() + 3;
    append(code, kSwapgs);
    append(code, kSysret);
    FakeGuest guest;
    guest.map_bytes(kLinuxIdtAddress, idt);
    guest.map_bytes(0xffffffff81a00000ULL, std::vector<uint8_t>(0x3000, 0xcc));
    guest.map_bytes(entry, code);
    auto r = discover_kernel_entry_points(guest, 1);
    INFO((r ? r->describe() : r.error().describe()));
    REQUIRE(r.has_value());
    CHECK(r->syscall_entry == entry);
    CHECK(r->endbr);
    CHECK(r->rip_relative);
    CHECK(r->sysret == entry + sysret);
    CHECK_FALSE(r->pti);
    CHECK(r->slow_return == 0);
    CHECK(r->iret == 0);
}
