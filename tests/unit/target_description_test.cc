// redirector/gdb/target_description.h on Debian QEMU 7.2's recorded target description.
#include "redirector/gdb/target_description.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <set>

#include "tests/unit/test_helpers.h"

using namespace cloudvmi;
using namespace cloudvmi::gdb;

namespace {

// Serves the recorded QEMU 7.2 documents, counting fetches.
struct FixtureFetcher {
    std::map<std::string, int> fetched;
    ErrorOr<std::string> operator()(const std::string& name) {
        ++fetched[name];
        if (name != "target.xml" && name != "i386-64bit.xml") {
            return make_error(ENOENT, "no such annex " + name);
        }
        return test::read_text("qemu-7.2/" + name);
    }
};

// Serves documents from a map.
struct MapFetcher {
    std::map<std::string, std::string> docs;
    std::map<std::string, int> fetched;
    ErrorOr<std::string> operator()(const std::string& name) {
        ++fetched[name];
        auto it = docs.find(name);
        if (it == docs.end()) return make_error(ENOENT, "no such annex " + name);
        return it->second;
    }
};

ErrorOr<RegisterLayout> load_from(MapFetcher& f) {
    return RegisterLayout::load([&](const std::string& n) { return f(n); });
}

}  // namespace

TEST_CASE("strip_xml_comments", "[tdesc]") {
    CHECK(strip_xml_comments("") == "");
    CHECK(strip_xml_comments("<a/>") == "<a/>");
    CHECK(strip_xml_comments("a<!-- x -->b") == "ab");
    CHECK(strip_xml_comments("<!---->") == "");
    CHECK(strip_xml_comments("1<!--a-->2<!--b-->3") == "123");
    CHECK(strip_xml_comments("x<!--<reg name=\"a\"/>\n<reg name=\"b\"/>-->y") == "xy");
    // Comments do not nest: the first --> ends it.
    CHECK(strip_xml_comments("<!-- <!-- -->x-->") == "x-->");
    // An unterminated comment swallows the rest.
    CHECK(strip_xml_comments("keep<!-- lost") == "keep");
    CHECK(strip_xml_comments("a-->b") == "a-->b");
}

TEST_CASE("xml_includes lists hrefs in document order", "[tdesc]") {
    CHECK(xml_includes(test::read_text("qemu-7.2/target.xml")) ==
          std::vector<std::string>{"i386-64bit.xml"});
    CHECK(xml_includes(test::read_text("qemu-7.2/i386-64bit.xml")).empty());
    CHECK(xml_includes("<target><xi:include href=\"a.xml\"/><xi:include href='b.xml'/>"
                       "<xi:include\n  href = \"c.xml\" /></target>") ==
          std::vector<std::string>{"a.xml", "b.xml", "c.xml"});
    // Commented out, or another element whose name merely starts the same way.
    CHECK(xml_includes("<!--<xi:include href=\"a.xml\"/>--><xi:includes href=\"b.xml\"/>").empty());
    CHECK(xml_includes("<xi:include xhref=\"no.xml\" href=\"yes.xml\"/>") ==
          std::vector<std::string>{"yes.xml"});
}

TEST_CASE("xml_architecture", "[tdesc]") {
    CHECK(xml_architecture(test::read_text("qemu-7.2/target.xml")) == "i386:x86-64");
    CHECK(xml_architecture(test::read_text("qemu-7.2/i386-64bit.xml")) == "");
    CHECK(xml_architecture("<target></target>") == "");
    CHECK(xml_architecture("<!--<architecture>arm</architecture>--><target/>") == "");
    CHECK(xml_architecture("<architecture>i386</architecture><architecture>arm</architecture>") ==
          "i386");
    CHECK(xml_architecture("<architecture>unterminated") == "");
}

TEST_CASE("parse_reg_elements on QEMU 7.2's i386-64bit.xml", "[tdesc]") {
    auto regs = parse_reg_elements(test::read_text("qemu-7.2/i386-64bit.xml"));
    REQUIRE(regs.has_value());
    // 16 GPRs, rip, eflags, 6 selectors, 3 bases, 6 control regs, 8 st, 8 fpu ctl,
    // 16 xmm, mxcsr; the four commented-out *_base registers are not there.
    REQUIRE(regs->size() == 66);
    CHECK((*regs)[0].name == "rax");
    CHECK((*regs)[0].regnum == 0);
    CHECK((*regs)[0].bytes == 8);
    CHECK((*regs)[1].name == "rbx");
    CHECK((*regs)[1].regnum == -1);
    CHECK(regs->back().name == "mxcsr");
    CHECK(regs->back().bytes == 4);
    std::set<std::string> names;
    for (const auto& r : *regs)
        names.insert(r.name);
    CHECK(names.size() == 66);
    CHECK(names.count("fs_base") == 1);
    CHECK(names.count("gs_base") == 1);
    CHECK(names.count("k_gs_base") == 1);
    CHECK(names.count("cs_base") == 0);
    CHECK(names.count("ss_base") == 0);
    CHECK(names.count("ds_base") == 0);
    CHECK(names.count("es_base") == 0);
}

TEST_CASE("parse_reg_elements attribute handling", "[tdesc]") {
    auto regs = parse_reg_elements(
        "<feature>"
        "<reg bitsize='16' name='a'/>"
        "<reg name = \"b\" bitsize = \"0x40\" regnum=\"0x10\"/>"
        "<reg\n\tname=\"c\"\n\tbitsize=\"80\" type=\"i387_ext\" group=\"float\">"
        "<reg xname=\"wrong\" name=\"d\" xbitsize=\"16\" bitsize=\"8\"/>"
        "<reggroup name=\"not-a-reg\" bitsize=\"64\"/>"
        "<register name=\"nor-this\" bitsize=\"64\"/>"
        "</feature>");
    REQUIRE(regs.has_value());
    REQUIRE(regs->size() == 4);
    CHECK((*regs)[0].name == "a");
    CHECK((*regs)[0].bytes == 2);
    CHECK((*regs)[0].regnum == -1);
    CHECK((*regs)[1].name == "b");
    CHECK((*regs)[1].bytes == 8);
    CHECK((*regs)[1].regnum == 16);
    CHECK((*regs)[2].name == "c");
    CHECK((*regs)[2].bytes == 10);
    CHECK((*regs)[3].name == "d");
    CHECK((*regs)[3].bytes == 1);

    auto none = parse_reg_elements("<feature><flags id=\"x\" size=\"4\"/></feature>");
    REQUIRE(none.has_value());
    CHECK(none->empty());
}

TEST_CASE("parse_reg_elements rejects malformed registers", "[tdesc]") {
    for (const char* xml : {
             "<reg bitsize=\"64\"/>",                          // no name
             "<reg name=\"a\"/>",                              // no bitsize
             "<reg name=\"a\" bitsize=\"0\"/>",                // empty
             "<reg name=\"a\" bitsize=\"12\"/>",               // not whole bytes
             "<reg name=\"a\" bitsize=\"8192\"/>",             // absurd
             "<reg name=\"a\" bitsize=\"sixty\"/>",            // not a number
             "<reg name=\"a\" bitsize=\"-8\"/>",               // negative
             "<reg name=\"a\" bitsize=\"64\" regnum=\"x\"/>",  // bad regnum
             "<reg name=\"a\" bitsize=\"64\" regnum=\"-1\"/>",
             "<reg name=\"a\" bitsize=\"64\" regnum=\"100001\"/>",
             "<reg name=\"ok\" bitsize=\"64\"/><reg name=\"b\" bitsize=\"7\"/>",
         }) {
        INFO(xml);
        auto r = parse_reg_elements(xml);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == EPROTO);
    }
}

TEST_CASE("RegisterLayout::load reads QEMU 7.2's description", "[tdesc]") {
    FixtureFetcher f;
    auto layout = RegisterLayout::load([&](const std::string& n) { return f(n); });
    REQUIRE(layout.has_value());
    CHECK(f.fetched == std::map<std::string, int>{{"target.xml", 1}, {"i386-64bit.xml", 1}});
    CHECK(layout->architecture() == "i386:x86-64");
    CHECK(layout->registers().size() == 66);

    // The total must match the recorded 'g' reply: 1216 hex digits.
    std::string g = test::read_text("qemu-7.2/g_packet.hex");
    while (!g.empty() && (g.back() == '\n' || g.back() == '\r'))
        g.pop_back();
    CHECK(layout->total_bytes() == g.size() / 2);
    CHECK(layout->total_bytes() == 608);

    struct Expect {
        const char* name;
        int regnum;
        size_t offset;
        size_t bytes;
    };
    const Expect expected[] = {
        {"rax", 0, 0, 8},        {"rbx", 1, 8, 8},        {"rsp", 7, 56, 8},
        {"r15", 15, 120, 8},     {"rip", 16, 16 * 8, 8},  {"eflags", 17, 136, 4},
        {"cs", 18, 140, 4},      {"ss", 19, 144, 4},      {"gs", 23, 160, 4},
        {"fs_base", 24, 164, 8}, {"gs_base", 25, 172, 8}, {"k_gs_base", 26, 180, 8},
        {"cr0", 27, 188, 8},     {"cr2", 28, 196, 8},     {"cr3", 29, 204, 8},
        {"cr4", 30, 212, 8},     {"cr8", 31, 220, 8},     {"efer", 32, 228, 8},
        {"st0", 33, 236, 10},    {"st7", 40, 306, 10},    {"fctrl", 41, 316, 4},
        {"fop", 48, 344, 4},     {"xmm0", 49, 348, 16},   {"xmm15", 64, 588, 16},
        {"mxcsr", 65, 604, 4},
    };
    for (const auto& e : expected) {
        INFO(e.name);
        const RegisterInfo* r = layout->find(e.name);
        REQUIRE(r != nullptr);
        CHECK(r->regnum == e.regnum);
        CHECK(r->offset == e.offset);
        CHECK(r->bytes == e.bytes);
    }
    for (const char* absent : {"cs_base", "ss_base", "ds_base", "es_base", "RIP", ""}) {
        INFO(absent);
        CHECK(layout->find(absent) == nullptr);
    }

    // Sorted by regnum, packed back to back.
    size_t offset = 0;
    int regnum = 0;
    for (const auto& r : layout->registers()) {
        INFO(r.name);
        CHECK(r.regnum == regnum++);
        CHECK(r.offset == offset);
        offset += r.bytes;
    }
    CHECK(offset == layout->total_bytes());
}

TEST_CASE("RegisterLayout::from_registers numbering and packing", "[tdesc]") {
    SECTION("implicit numbers follow the previous register") {
        auto l = RegisterLayout::from_registers(
            {{"a", -1, 8, 0}, {"b", 5, 4, 0}, {"c", -1, 2, 0}, {"d", 2, 1, 0}});
        REQUIRE(l.has_value());
        REQUIRE(l->registers().size() == 4);
        // Sorted by number: a=0, d=2, b=5, c=6; offsets packed in that order.
        CHECK(l->registers()[0].name == "a");
        CHECK(l->registers()[1].name == "d");
        CHECK(l->registers()[2].name == "b");
        CHECK(l->registers()[3].name == "c");
        CHECK(l->find("a")->offset == 0);
        CHECK(l->find("d")->regnum == 2);
        CHECK(l->find("d")->offset == 8);
        CHECK(l->find("b")->offset == 9);
        CHECK(l->find("c")->regnum == 6);
        CHECK(l->find("c")->offset == 13);
        CHECK(l->total_bytes() == 15);
        CHECK(l->architecture().empty());
    }
    SECTION("incoming offsets are ignored") {
        auto l = RegisterLayout::from_registers({{"x", 0, 4, 1000}, {"y", 1, 4, 77}});
        REQUIRE(l.has_value());
        CHECK(l->find("x")->offset == 0);
        CHECK(l->find("y")->offset == 4);
    }
    SECTION("empty") {
        auto l = RegisterLayout::from_registers({});
        REQUIRE(l.has_value());
        CHECK(l->total_bytes() == 0);
        CHECK(l->find("rax") == nullptr);
    }
    SECTION("duplicate explicit numbers") {
        auto l = RegisterLayout::from_registers({{"a", 3, 8, 0}, {"b", 3, 8, 0}});
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == EPROTO);
    }
    SECTION("an implicit number colliding with an explicit one") {
        auto l = RegisterLayout::from_registers({{"a", 0, 8, 0}, {"b", -1, 8, 0}, {"c", 1, 8, 0}});
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == EPROTO);
    }
}

TEST_CASE("RegisterLayout::load error cases", "[tdesc]") {
    SECTION("a missing include keeps the fetcher's errno and names the document") {
        MapFetcher f;
        f.docs["target.xml"] = "<target><xi:include href=\"gone.xml\"/></target>";
        auto l = load_from(f);
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == ENOENT);
        CHECK(l.error().message().find("gone.xml") != std::string::npos);
    }
    SECTION("no target.xml at all") {
        MapFetcher f;
        auto l = load_from(f);
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == ENOENT);
    }
    SECTION("no registers") {
        MapFetcher f;
        f.docs["target.xml"] = "<target><architecture>i386</architecture></target>";
        auto l = load_from(f);
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == EPROTO);
    }
    SECTION("a malformed register in an included document") {
        MapFetcher f;
        f.docs["target.xml"] = "<target><xi:include href=\"core.xml\"/></target>";
        f.docs["core.xml"] = "<feature><reg name=\"rax\" bitsize=\"63\"/></feature>";
        auto l = load_from(f);
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == EPROTO);
        CHECK(l.error().message().find("core.xml") != std::string::npos);
    }
    SECTION("duplicate register numbers across documents") {
        MapFetcher f;
        f.docs["target.xml"] =
            "<target><xi:include href=\"a.xml\"/><xi:include href=\"b.xml\"/></target>";
        f.docs["a.xml"] = "<feature><reg name=\"x\" bitsize=\"64\" regnum=\"4\"/></feature>";
        f.docs["b.xml"] = "<feature><reg name=\"y\" bitsize=\"64\" regnum=\"4\"/></feature>";
        auto l = load_from(f);
        REQUIRE_FALSE(l.has_value());
        CHECK(l.error().code() == EPROTO);
    }
    SECTION("an include loop terminates and lists each register once") {
        MapFetcher f;
        f.docs["target.xml"] = "<target><xi:include href=\"a.xml\"/></target>";
        f.docs["a.xml"] =
            "<feature><reg name=\"x\" bitsize=\"64\"/></feature><xi:include href=\"b.xml\"/>";
        f.docs["b.xml"] =
            "<feature><reg name=\"y\" bitsize=\"32\"/></feature>"
            "<xi:include href=\"a.xml\"/><xi:include href=\"target.xml\"/>";
        auto l = load_from(f);
        REQUIRE(l.has_value());
        CHECK(l->registers().size() == 2);
        CHECK(l->total_bytes() == 12);
        CHECK(f.fetched["target.xml"] == 1);
        CHECK(f.fetched["a.xml"] == 1);
        CHECK(f.fetched["b.xml"] == 1);
    }
    SECTION("a document included twice is read once") {
        MapFetcher f;
        f.docs["target.xml"] =
            "<target><xi:include href=\"a.xml\"/><xi:include href=\"b.xml\"/></target>";
        f.docs["a.xml"] = "<xi:include href=\"common.xml\"/>";
        f.docs["b.xml"] = "<xi:include href=\"common.xml\"/>";
        f.docs["common.xml"] = "<feature><reg name=\"r\" bitsize=\"64\"/></feature>";
        auto l = load_from(f);
        REQUIRE(l.has_value());
        CHECK(l->registers().size() == 1);
        CHECK(f.fetched["common.xml"] == 1);
    }
    SECTION("include depth is limited") {
        // target.xml -> d1.xml -> ... -> dN.xml, the last one holding the register.
        auto chain = [](int n) {
            MapFetcher f;
            f.docs["target.xml"] = "<target><xi:include href=\"d1.xml\"/></target>";
            for (int i = 1; i < n; ++i) {
                f.docs["d" + std::to_string(i) + ".xml"] =
                    "<xi:include href=\"d" + std::to_string(i + 1) + ".xml\"/>";
            }
            f.docs["d" + std::to_string(n) + ".xml"] =
                "<feature><reg name=\"deep\" bitsize=\"64\"/></feature>";
            return f;
        };
        auto ok_chain = chain(8);
        auto ok = load_from(ok_chain);
        REQUIRE(ok.has_value());
        CHECK(ok->find("deep") != nullptr);

        auto deep_chain = chain(9);
        auto deep = load_from(deep_chain);
        REQUIRE_FALSE(deep.has_value());
        CHECK(deep.error().code() == EPROTO);
        CHECK(deep_chain.fetched.count("d10.xml") == 0);
    }
}

TEST_CASE("RegisterLayout::load expands includes in place, as gdb does", "[tdesc]") {
    // gdb replaces <xi:include> by the included document, then numbers registers without a
    // regnum after the previous register in that expanded order. A register written after an
    // include therefore follows the included registers in the 'g' packet.
    MapFetcher f;
    f.docs["target.xml"] =
        "<target><xi:include href=\"core.xml\"/>"
        "<feature name=\"extra\"><reg name=\"late\" bitsize=\"32\"/></feature></target>";
    f.docs["core.xml"] =
        "<feature name=\"core\"><reg name=\"early\" bitsize=\"64\"/>"
        "<reg name=\"early2\" bitsize=\"64\"/></feature>";
    auto l = load_from(f);
    REQUIRE(l.has_value());
    REQUIRE(l->find("early") != nullptr);
    REQUIRE(l->find("early2") != nullptr);
    REQUIRE(l->find("late") != nullptr);
    CHECK(l->find("early")->regnum == 0);
    CHECK(l->find("early")->offset == 0);
    CHECK(l->find("early2")->regnum == 1);
    CHECK(l->find("early2")->offset == 8);
    CHECK(l->find("late")->regnum == 2);
    CHECK(l->find("late")->offset == 16);
}

TEST_CASE("RegisterLayout::load reads the largest description in linear time", "[tdesc]") {
    // The client accepts up to 1 MiB of description from the stub. Each register used to
    // restart the search for the next <xi:include> from there to the end of the document:
    // quadratic, seconds of CPU for a hostile stub's 1 MiB of registers.
    std::string doc = "<target>";
    int n = 0;
    while (doc.size() < (1u << 20))
        doc += "<reg name=\"r" + std::to_string(n++) + "\" bitsize=\"8\"/>";
    doc += "</target>";
    MapFetcher f;
    f.docs["target.xml"] = doc;
    auto start = std::chrono::steady_clock::now();
    auto l = load_from(f);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    REQUIRE(l.has_value());
    CHECK(l->registers().size() == static_cast<size_t>(n));
    CHECK(l->total_bytes() == static_cast<size_t>(n));
    CHECK(seconds < 2.0);
}
