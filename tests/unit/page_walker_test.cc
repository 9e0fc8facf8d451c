// redirector/x86/page_walker.h over a fake physical memory.
#include "redirector/x86/page_walker.h"

#include <array>
#include <catch2/catch.hpp>
#include <map>

using namespace cloudvmi;

namespace {

constexpr uint64_t P = 1ULL << 0;
constexpr uint64_t W = 1ULL << 1;
constexpr uint64_t U = 1ULL << 2;
constexpr uint64_t PS = 1ULL << 7;
constexpr uint64_t PAT_LARGE = 1ULL << 12;  // PAT bit of a 2 MiB / 1 GiB entry
constexpr uint64_t NX = 1ULL << 63;

// Physical memory made of 4 KiB pages; reading a page that does not exist fails with EIO.
struct FakePhys {
    std::map<uint64_t, std::array<uint8_t, 4096>> pages;
    int reads = 0;

    void set_entry(uint64_t table, uint64_t index, uint64_t value) {
        auto& page = pages[table];
        std::memcpy(page.data() + index * 8, &value, 8);
    }
    void add_table(uint64_t table) { pages.try_emplace(table); }  // value-initialised: zeros

    PhysicalReader reader() {
        return [this](uint64_t pa, std::span<uint8_t> out) -> ErrorOr<void> {
            ++reads;
            auto it = pages.find(pa & ~uint64_t{0xfff});
            if (it == pages.end() || (pa & 0xfff) + out.size() > 4096) {
                return make_error(EIO, "no such physical page");
            }
            std::memcpy(out.data(), it->second.data() + (pa & 0xfff), out.size());
            return {};
        };
    }
};

uint64_t idx(uint64_t va, int level) {
    return (va >> (12 + 9 * (level - 1))) & 0x1ff;
}

// Tables of a 4-level walk and where they are.
constexpr uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kPt = 0x4000;

// Maps va through PML4 -> PDPT -> PD -> PT with the given flags at each level.
void map_4k(FakePhys& m, uint64_t va, uint64_t pa, uint64_t flags4 = P | W | U,
            uint64_t flags3 = P | W | U, uint64_t flags2 = P | W | U, uint64_t flags1 = P | W | U) {
    m.add_table(kPml4);
    m.add_table(kPdpt);
    m.add_table(kPd);
    m.add_table(kPt);
    m.set_entry(kPml4, idx(va, 4), kPdpt | flags4);
    m.set_entry(kPdpt, idx(va, 3), kPd | flags3);
    m.set_entry(kPd, idx(va, 2), kPt | flags2);
    m.set_entry(kPt, idx(va, 1), pa | flags1);
}

}  // namespace

TEST_CASE("4 KiB page", "[pagewalk]") {
    FakePhys m;
    const uint64_t va = 0x00007f1234567abcULL;
    map_4k(m, va & ~0xfffULL, 0xabcd000);
    auto t = translate_virtual(m.reader(), kPml4, va);
    REQUIRE(t.has_value());
    CHECK(t->physical == 0xabcdabc);
    CHECK(t->page_size == 4096);
    CHECK(t->writable);
    CHECK(t->user);
    CHECK(m.reads == 4);

    // Neighbouring addresses of the same page share the frame.
    auto first = translate_virtual(m.reader(), kPml4, va & ~0xfffULL);
    REQUIRE(first.has_value());
    CHECK(first->physical == 0xabcd000);
    auto last = translate_virtual(m.reader(), kPml4, va | 0xfff);
    REQUIRE(last.has_value());
    CHECK(last->physical == 0xabcdfff);
}

TEST_CASE("kernel half addresses and high physical frames", "[pagewalk]") {
    FakePhys m;
    const uint64_t va = 0xffffffffb1600080ULL;
    const uint64_t frame = 0x000ffffffffff000ULL;  // highest 52-bit frame
    map_4k(m, va & ~0xfffULL, frame | NX, P | W, P | W, P | W, P);
    auto t = translate_virtual(m.reader(), kPml4, va);
    REQUIRE(t.has_value());
    CHECK(t->physical == (frame | 0x080));  // NX and flag bits are not address bits
    CHECK_FALSE(t->writable);
    CHECK_FALSE(t->user);
}

TEST_CASE("writable and user need every level", "[pagewalk]") {
    const uint64_t va = 0x400000;
    for (int level = 1; level <= 4; ++level) {
        INFO("level " << level);
        uint64_t f[5] = {0, P | W | U, P | W | U, P | W | U, P | W | U};
        f[level] &= ~W;
        FakePhys m;
        map_4k(m, va, 0x5000, f[4], f[3], f[2], f[1]);
        auto t = translate_virtual(m.reader(), kPml4, va);
        REQUIRE(t.has_value());
        CHECK_FALSE(t->writable);
        CHECK(t->user);

        uint64_t g[5] = {0, P | W | U, P | W | U, P | W | U, P | W | U};
        g[level] &= ~U;
        FakePhys m2;
        map_4k(m2, va, 0x5000, g[4], g[3], g[2], g[1]);
        auto t2 = translate_virtual(m2.reader(), kPml4, va);
        REQUIRE(t2.has_value());
        CHECK(t2->writable);
        CHECK_FALSE(t2->user);
    }
}

TEST_CASE("2 MiB page", "[pagewalk]") {
    FakePhys m;
    const uint64_t va = 0x00007f0000345678ULL;  // offset 0x145678 in its 2 MiB page
    m.add_table(kPml4);
    m.add_table(kPdpt);
    m.add_table(kPd);
    m.set_entry(kPml4, idx(va, 4), kPdpt | P | W | U);
    m.set_entry(kPdpt, idx(va, 3), kPd | P | W | U);
    m.set_entry(kPd, idx(va, 2), 0x40000000ULL | PAT_LARGE | PS | P | W | U);
    auto t = translate_virtual(m.reader(), kPml4, va);
    REQUIRE(t.has_value());
    CHECK(t->page_size == 2ULL << 20);
    CHECK(t->physical == 0x40000000ULL + 0x145678);  // the PAT bit is not an address bit
    CHECK(t->writable);
    CHECK(t->user);
    CHECK(m.reads == 3);
}

TEST_CASE("1 GiB page", "[pagewalk]") {
    FakePhys m;
    const uint64_t va = 0xffff888012345678ULL;  // direct map; offset 0x12345678 in its 1 GiB
    m.add_table(kPml4);
    m.add_table(kPdpt);
    m.set_entry(kPml4, idx(va, 4), kPdpt | P | W);
    m.set_entry(kPdpt, idx(va, 3), 0x80000000ULL | NX | PAT_LARGE | PS | P | W);
    auto t = translate_virtual(m.reader(), kPml4, va);
    REQUIRE(t.has_value());
    CHECK(t->page_size == 1ULL << 30);
    CHECK(t->physical == 0x80000000ULL + 0x12345678);
    CHECK(t->writable);
    CHECK_FALSE(t->user);
    CHECK(m.reads == 2);
}

TEST_CASE("PS in a PML4 entry or a PTE does not make a large page", "[pagewalk]") {
    const uint64_t va = 0x00007f1234567abcULL;
    SECTION("PML4E bit 7 is ignored") {
        FakePhys m;
        map_4k(m, va & ~0xfffULL, 0xabcd000, P | W | U | PS);
        auto t = translate_virtual(m.reader(), kPml4, va);
        REQUIRE(t.has_value());
        CHECK(t->page_size == 4096);
        CHECK(t->physical == 0xabcdabc);
    }
    SECTION("PTE bit 7 is PAT") {
        FakePhys m;
        map_4k(m, va & ~0xfffULL, 0xabcd000, P | W | U, P | W | U, P | W | U, P | W | U | PS);
        auto t = translate_virtual(m.reader(), kPml4, va);
        REQUIRE(t.has_value());
        CHECK(t->page_size == 4096);
        CHECK(t->physical == 0xabcdabc);
    }
}

TEST_CASE("not-present entries are EFAULT at every level", "[pagewalk]") {
    const uint64_t va = 0x00005555deadb000ULL;
    for (int level = 1; level <= 4; ++level) {
        INFO("level " << level);
        uint64_t f[5] = {0, P | W | U, P | W | U, P | W | U, P | W | U};
        f[level] &= ~P;
        FakePhys m;
        map_4k(m, va, 0x5000, f[4], f[3], f[2], f[1]);
        auto t = translate_virtual(m.reader(), kPml4, va);
        REQUIRE_FALSE(t.has_value());
        CHECK(t.error().code() == EFAULT);
    }
    FakePhys empty;
    empty.add_table(kPml4);
    auto t = translate_virtual(empty.reader(), kPml4, va);
    REQUIRE_FALSE(t.has_value());
    CHECK(t.error().code() == EFAULT);
}

TEST_CASE("a failing physical read is passed through", "[pagewalk]") {
    FakePhys m;
    m.add_table(kPml4);
    m.set_entry(kPml4, 0, 0x9000 | P | W | U);  // points at a page that does not exist
    auto t = translate_virtual(m.reader(), kPml4, 0x1000);
    REQUIRE_FALSE(t.has_value());
    CHECK(t.error().code() == EIO);

    auto no_root = translate_virtual(m.reader(), 0x7000, 0x1000);
    REQUIRE_FALSE(no_root.has_value());
    CHECK(no_root.error().code() == EIO);
}

TEST_CASE("CR3 flag and PCID bits are ignored", "[pagewalk]") {
    FakePhys m;
    const uint64_t va = 0x00007f1234567abcULL;
    map_4k(m, va & ~0xfffULL, 0xabcd000);
    for (uint64_t low : {0x0ULL, 0x1ULL, 0x8ULL, 0x18ULL, 0x123ULL, 0xfffULL}) {
        INFO("cr3 low bits " << low);
        auto t = translate_virtual(m.reader(), kPml4 | low, va);
        REQUIRE(t.has_value());
        CHECK(t->physical == 0xabcdabc);
    }
}

TEST_CASE("5-level paging (LA57)", "[pagewalk]") {
    FakePhys m;
    constexpr uint64_t kPml5 = 0x8000, kPml4b = 0x9000;
    // Bits 48..56 select the PML5 entry; this address needs la57 to be canonical.
    const uint64_t va = (0x12ULL << 48) | 0x00007f1234567abcULL;
    m.add_table(kPml5);
    m.add_table(kPml4b);
    m.set_entry(kPml5, 0x12, kPml4b | P | W | U);
    m.add_table(kPdpt);
    m.add_table(kPd);
    m.add_table(kPt);
    m.set_entry(kPml4b, idx(va, 4), kPdpt | P | W | U);
    m.set_entry(kPdpt, idx(va, 3), kPd | P | W | U);
    m.set_entry(kPd, idx(va, 2), kPt | P | W | U);
    m.set_entry(kPt, idx(va, 1), 0x77000 | P | W);

    auto t = translate_virtual(m.reader(), kPml5, va, true);
    REQUIRE(t.has_value());
    CHECK(t->physical == 0x77abc);
    CHECK(t->page_size == 4096);
    CHECK(t->writable);
    CHECK_FALSE(t->user);
    CHECK(m.reads == 5);

    // The PML5 index really is bits 48..56: entry 0 of the PML5 is empty.
    auto low = translate_virtual(m.reader(), kPml5, 0x00007f1234567abcULL, true);
    REQUIRE_FALSE(low.has_value());
    CHECK(low.error().code() == EFAULT);

    // A 4-level walk from the same root uses bits 39..47 as its first index instead.
    auto four = translate_virtual(m.reader(), kPml5, va, false);
    REQUIRE_FALSE(four.has_value());
    CHECK(four.error().code() == EFAULT);
}
