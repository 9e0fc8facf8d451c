#include "redirector/x86/page_walker.h"

#include "common/strings.h"

namespace cloudvmi {

namespace {
constexpr uint64_t kPresent = 1;
constexpr uint64_t kWritable = 1 << 1;
constexpr uint64_t kUser = 1 << 2;
constexpr uint64_t kLargePage = 1 << 7;
constexpr uint64_t kAddressMask = 0x000ffffffffff000ULL;
}  // namespace

namespace {
uint64_t table_index(uint64_t va, int level) {
    return (va >> (12 + 9 * (level - 1))) & 0x1ff;
}
}  // namespace

ErrorOr<bool> top_level_present(const PhysicalReader& read, uint64_t cr3, uint64_t va, bool la57) {
    uint64_t entry = 0;
    TRY(read((cr3 & kAddressMask) + table_index(va, la57 ? 5 : 4) * 8,
             std::span(reinterpret_cast<uint8_t*>(&entry), 8)));
    return (entry & kPresent) != 0;
}

ErrorOr<Translation> translate_virtual(const PhysicalReader& read, uint64_t cr3, uint64_t va,
                                       bool la57) {
    uint64_t table = cr3 & kAddressMask;
    int levels = la57 ? 5 : 4;
    bool writable = true;
    bool user = true;
    for (int level = levels; level >= 1; --level) {
        int shift = 12 + 9 * (level - 1);
        uint64_t index = table_index(va, level);
        uint64_t entry = 0;
        TRY(read(table + index * 8, std::span(reinterpret_cast<uint8_t*>(&entry), 8)));
        if (!(entry & kPresent)) {
            return make_error(EFAULT, strformat("guest address %s not mapped (level %d)",
                                                hex_u64(va).c_str(), level));
        }
        writable = writable && (entry & kWritable);
        user = user && (entry & kUser);
        bool large = (level == 2 || level == 3) && (entry & kLargePage);
        if (large || level == 1) {
            uint64_t size = uint64_t{1} << shift;
            uint64_t base = entry & kAddressMask & ~(size - 1);
            return Translation{base | (va & (size - 1)), size, writable, user,
                               table + index * 8,        entry};
        }
        table = entry & kAddressMask;
    }
    return make_error(EPROTO, "page walk did not terminate");
}

}  // namespace cloudvmi
