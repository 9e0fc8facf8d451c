// Fuzzes the target description reader (redirector/gdb/target_description.h): the XML
// documents a stub hands out through qXfer:features:read, xi:include chains included.
//
// Input: documents separated by NUL bytes. The first is target.xml; each further fetch
// (whatever name the previous documents include) gets the next one, and a fetch past the
// last document fails as a stub's error reply would.
#include <set>
#include <string>
#include <vector>

#include "common/strings.h"
#include "fuzz/fuzz_check.h"
#include "redirector/gdb/target_description.h"

using namespace cloudvmi;
using namespace cloudvmi::gdb;

FUZZ_QUIET_LOGS()

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    std::vector<std::string_view> docs = split(fuzz::as_text(data, size), '\0');

    // The pure helpers on the first document.
    std::string_view first = docs[0];
    std::string clean = strip_xml_comments(first);
    FUZZ_CHECK(clean.size() <= first.size());
    FUZZ_CHECK(strip_xml_comments(clean) == clean || clean.find("<!--") != std::string::npos);
    (void)xml_includes(first);
    FUZZ_CHECK(xml_architecture(first).size() <= first.size());
    if (auto regs = parse_reg_elements(first)) {
        for (const auto& r : *regs) {
            FUZZ_CHECK(r.bytes > 0 && r.bytes <= 512);
            FUZZ_CHECK(r.regnum >= -1);
        }
    }

    // The whole load, includes followed.
    size_t fetches = 0;
    auto fetch = [&](const std::string& name) -> ErrorOr<std::string> {
        FUZZ_CHECK(fetches > 0 || name == "target.xml");
        if (fetches >= docs.size()) return make_error(EPROTO, "no such document " + name);
        return std::string(docs[fetches++]);
    };
    auto layout = RegisterLayout::load(fetch);
    if (!layout) return 0;
    FUZZ_CHECK(!layout->registers().empty());
    size_t offset = 0;
    int previous = -1;
    for (const auto& r : layout->registers()) {
        // Numbered in order without repeats, packed back to back in the 'g' reply.
        FUZZ_CHECK(r.regnum > previous);
        previous = r.regnum;
        FUZZ_CHECK(r.offset == offset);
        FUZZ_CHECK(r.bytes > 0 && r.bytes <= 512);
        offset += r.bytes;
        const RegisterInfo* found = layout->find(r.name);
        FUZZ_CHECK(found != nullptr && found->name == r.name);
    }
    FUZZ_CHECK(layout->total_bytes() == offset);
    return 0;
}
