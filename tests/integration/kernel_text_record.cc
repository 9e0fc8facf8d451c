// Records what kernel discovery reads from a real guest, as a unit-test fixture
// (tests/data/kernel-<version>[-nopti]/). Hidden: run it on purpose, one guest at a time:
//
//   CLOUDVMI_TEST_RELEASE=trixie CLOUDVMI_RECORD_DIR=tests/data/kernel-6.12.118-pti
//   build/tests/guest_tests "[.record]"
//
// Files: idt.bin (the 32 exception gates at the fixed IDT address), handlers_page.bin (the
// page of the lowest exception handler, where the scan starts), entry_page.bin (the page
// holding entry_SYSCALL_64), entry_code.bin (kEntryCodeWindow bytes from the entry),
// slow_path.bin (kSlowPathWindow bytes from the slow return path, when found), meta.txt
// (addresses, key=hex), source.txt (which kernel, how booted, what discovery found).
// With CLOUDVMI_RECORD_SPAN=BYTES it also writes span.bin and span.txt: the text from the
// handlers' page - BYTES to + BYTES (unreadable pages as 0xcc), for studying a kernel that
// discovery does not recognise (objdump -D -b binary -mi386:x86-64 --adjust-vma=START).
#include <catch2/catch.hpp>
#include <cstdlib>
#include <fstream>

#include "common/strings.h"
#include "redirector/guest/gdbstub_access.h"
#include "redirector/inject/kernel_discovery.h"
#include "tests/integration/guest_fixture.h"

using namespace cloudvmi;
using namespace cloudvmi::test;

namespace {

void write_file(const std::string& path, const std::vector<uint8_t>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(bytes.data()),
              static_cast<std::streamsize>(bytes.size()));
    INFO("writing " << path);
    REQUIRE(out.good());
}

std::vector<uint8_t> read_guest(GuestAccess& g, VcpuId v, uint64_t va, size_t n) {
    std::vector<uint8_t> out(n);
    auto r = g.read_virtual(v, va, out);
    INFO("reading " << n << " bytes at " << hex_u64(va) << ": " << (r ? "" : r.error().describe()));
    REQUIRE(r);
    return out;
}

}  // namespace

TEST_CASE("record the kernel text discovery reads", "[.record]") {
    const char* dir = std::getenv("CLOUDVMI_RECORD_DIR");
    INFO("set CLOUDVMI_RECORD_DIR to the fixture directory to write");
    REQUIRE(dir != nullptr);
    REQUIRE(std::string(dir) != "");
    REQUIRE(std::system(("mkdir -p '" + std::string(dir) + "'").c_str()) == 0);

    auto& guest = TestGuest::shared();
    auto stub = attach_stub(guest);
    GuestAccess& g = *stub;
    auto vcpus = g.vcpus();
    REQUIRE(vcpus);
    REQUIRE_FALSE(vcpus->empty());
    VcpuId v = vcpus->front();

    auto idt = read_guest(g, v, kLinuxIdtAddress, 32 * 16);
    write_file(std::string(dir) + "/idt.bin", idt);
    auto handlers = parse_idt_handlers(idt);
    REQUIRE(handlers.size() >= 16);
    uint64_t lowest = *std::min_element(handlers.begin(), handlers.end());
    uint64_t handlers_page = lowest & ~uint64_t{0xfff};
    write_file(std::string(dir) + "/handlers_page.bin", read_guest(g, v, handlers_page, 4096));

    if (const char* span_env = std::getenv("CLOUDVMI_RECORD_SPAN")) {
        uint64_t span = parse_u64(span_env).value_or(0x20000) & ~uint64_t{0xfff};
        std::vector<uint8_t> all;
        for (uint64_t a = handlers_page - span; a < handlers_page + span; a += 4096) {
            std::vector<uint8_t> page(4096, 0xcc);
            (void)g.read_virtual(v, a, page);
            all.insert(all.end(), page.begin(), page.end());
        }
        write_file(std::string(dir) + "/span.bin", all);
        std::ofstream(std::string(dir) + "/span.txt")
            << "start=" << hex_u64(handlers_page - span) << "\n";
    }

    auto kep = discover_kernel_entry_points(g, v);
    INFO((kep ? "" : kep.error().describe()));
    if (kep) {
        uint64_t entry_page = kep->syscall_entry & ~uint64_t{0xfff};
        write_file(std::string(dir) + "/entry_page.bin", read_guest(g, v, entry_page, 4096));
        write_file(std::string(dir) + "/entry_code.bin",
                   read_guest(g, v, kep->syscall_entry, kEntryCodeWindow));
        if (kep->slow_return != 0) {
            write_file(std::string(dir) + "/slow_path.bin",
                       read_guest(g, v, kep->slow_return, kSlowPathWindow));
        }
        std::ofstream meta(std::string(dir) + "/meta.txt", std::ios::trunc);
        auto line = [&](const char* key, uint64_t value) {
            meta << key << "=" << strformat("%016llx", static_cast<unsigned long long>(value))
                 << "\n";
        };
        line("handlers_page", handlers_page);
        line("entry_page", entry_page);
        line("entry", kep->syscall_entry);
        line("sysret", kep->sysret);
        line("slow_return", kep->slow_return);
        line("iret", kep->iret);
        line("pti", kep->pti ? 1 : 0);
        REQUIRE(meta.good());
        std::ofstream(std::string(dir) + "/source.txt", std::ios::trunc)
            << "Recorded by tests/integration/kernel_text_record.cc from a real guest:\n"
            << "kernel " << guest.kernel_version() << " (" << guest.config().describe()
            << ", qemu64,vendor=GenuineIntel, TCG)\n"
            << kep->describe() << "\n";
    }
    REQUIRE(g.detach());
    REQUIRE(kep);
}
