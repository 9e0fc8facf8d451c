// Fuzzes the page-table walker, redirector/x86/page_walker.h, which the mailbox engine runs
// over the shadow's page tables: guest memory a guest root can rewrite at will.
//
// Input: 16 bytes of CR3 and virtual address (and a 5-level flag), then the guest's
// physical memory from address 0 (reads beyond it fail, as beyond RAM).
#include <cstring>

#include "fuzz/fuzz_check.h"
#include "redirector/x86/page_walker.h"

using namespace cloudvmi;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 17) return 0;
    uint64_t cr3 = 0, va = 0;
    std::memcpy(&cr3, data, 8);
    std::memcpy(&va, data + 8, 8);
    bool la57 = (data[16] & 1) != 0;
    std::span<const uint8_t> ram(data + 17, size - 17);
    int reads = 0;
    PhysicalReader read = [&](uint64_t pa, std::span<uint8_t> out) -> ErrorOr<void> {
        ++reads;
        if (pa > ram.size() || out.size() > ram.size() - pa) {
            return make_error(EFAULT, "beyond RAM");
        }
        std::memcpy(out.data(), ram.data() + pa, out.size());
        return {};
    };
    auto t = translate_virtual(read, cr3, va, la57);
    FUZZ_CHECK(reads <= 5);  // one entry per level, never more
    if (t) {
        FUZZ_CHECK(t->page_size == 4096 || t->page_size == (2u << 20) ||
                   t->page_size == (1u << 30));
        FUZZ_CHECK((t->physical & (t->page_size - 1)) == (va & (t->page_size - 1)));
        FUZZ_CHECK(t->entry_address + 8 <= ram.size());
        FUZZ_CHECK(t->entry & 1);  // present
    }
    return 0;
}
