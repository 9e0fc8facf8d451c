#include "redirector/gdb/target_description.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "common/strings.h"

namespace cloudvmi::gdb {

namespace {

// Value of attr="..." (or attr='...') inside one element's text.
std::optional<std::string> attribute(std::string_view element, std::string_view attr) {
    size_t pos = 0;
    while ((pos = element.find(attr, pos)) != std::string_view::npos) {
        bool word_start = pos == 0 || element[pos - 1] == ' ' || element[pos - 1] == '\t' ||
                          element[pos - 1] == '\n' || element[pos - 1] == '\r';
        size_t eq = pos + attr.size();
        while (eq < element.size() && element[eq] == ' ')
            ++eq;
        if (word_start && eq < element.size() && element[eq] == '=') {
            size_t q = eq + 1;
            while (q < element.size() && element[q] == ' ')
                ++q;
            if (q < element.size() && (element[q] == '"' || element[q] == '\'')) {
                size_t end = element.find(element[q], q + 1);
                if (end == std::string_view::npos) return std::nullopt;
                return std::string(element.substr(q + 1, end - q - 1));
            }
        }
        pos += attr.size();
    }
    return std::nullopt;
}

// Calls f(element_text) for every <tag ...> element.
template <class F>
void for_each_element(std::string_view xml, std::string_view tag, F f) {
    std::string open = "<" + std::string(tag);
    size_t pos = 0;
    while ((pos = xml.find(open, pos)) != std::string_view::npos) {
        size_t after = pos + open.size();
        if (after < xml.size() && (xml[after] == ' ' || xml[after] == '/' || xml[after] == '>' ||
                                   xml[after] == '\n' || xml[after] == '\t')) {
            size_t end = xml.find('>', after);
            if (end == std::string_view::npos) return;
            f(xml.substr(pos, end - pos + 1));
            pos = end;
        } else {
            pos = after;
        }
    }
}

}  // namespace

std::string strip_xml_comments(std::string_view xml) {
    std::string out;
    size_t pos = 0;
    while (pos < xml.size()) {
        size_t start = xml.find("<!--", pos);
        if (start == std::string_view::npos) {
            out.append(xml.substr(pos));
            break;
        }
        out.append(xml.substr(pos, start - pos));
        size_t end = xml.find("-->", start + 4);
        if (end == std::string_view::npos) break;  // unterminated comment: drop the rest
        pos = end + 3;
    }
    return out;
}

std::vector<std::string> xml_includes(std::string_view xml) {
    std::vector<std::string> hrefs;
    std::string clean = strip_xml_comments(xml);
    for_each_element(clean, "xi:include", [&](std::string_view el) {
        if (auto href = attribute(el, "href")) hrefs.push_back(*href);
    });
    return hrefs;
}

std::string xml_architecture(std::string_view xml) {
    std::string clean = strip_xml_comments(xml);
    auto start = clean.find("<architecture>");
    if (start == std::string::npos) return {};
    start += 14;
    auto end = clean.find("</architecture>", start);
    if (end == std::string::npos) return {};
    return clean.substr(start, end - start);
}

ErrorOr<std::vector<RegisterInfo>> parse_reg_elements(std::string_view xml) {
    std::string clean = strip_xml_comments(xml);
    std::vector<RegisterInfo> regs;
    std::optional<Error> failure;
    for_each_element(clean, "reg", [&](std::string_view el) {
        if (failure) return;
        auto name = attribute(el, "name");
        auto bits = attribute(el, "bitsize");
        auto bits_value = bits ? parse_u64(*bits) : std::nullopt;
        if (!name || !bits_value || *bits_value == 0 || *bits_value % 8 != 0 ||
            *bits_value > 4096) {
            failure = Error(EPROTO, "target description: bad <reg> element: " + printable(el, 120));
            return;
        }
        RegisterInfo r;
        r.name = *name;
        r.bytes = *bits_value / 8;
        r.regnum = -1;
        if (auto num = attribute(el, "regnum")) {
            auto v = parse_u64(*num);
            if (!v || *v > 100000) {
                failure = Error(EPROTO, "target description: bad regnum in " + printable(el, 120));
                return;
            }
            r.regnum = static_cast<int>(*v);
        }
        regs.push_back(std::move(r));
    });
    if (failure) return std::unexpected(*failure);
    return regs;
}

ErrorOr<RegisterLayout> RegisterLayout::from_registers(std::vector<RegisterInfo> regs) {
    // Registers without an explicit regnum follow the previous one.
    int next = 0;
    std::set<int> used;
    for (auto& r : regs) {
        if (r.regnum < 0) r.regnum = next;
        if (!used.insert(r.regnum).second) {
            return make_error(
                EPROTO, strformat("target description: register number %d used twice", r.regnum));
        }
        next = r.regnum + 1;
    }
    std::sort(regs.begin(), regs.end(),
              [](const RegisterInfo& a, const RegisterInfo& b) { return a.regnum < b.regnum; });
    RegisterLayout layout;
    size_t offset = 0;
    for (auto& r : regs) {
        r.offset = offset;
        offset += r.bytes;
    }
    layout.regs_ = std::move(regs);
    layout.total_bytes_ = offset;
    return layout;
}

ErrorOr<RegisterLayout> RegisterLayout::load(const XmlFetcher& fetch) {
    std::vector<RegisterInfo> all;
    std::string architecture;
    std::set<std::string> seen;
    // An include stands for the included document at its place, as gdb reads it: walk each
    // document's <reg> and <xi:include> elements in order.
    std::function<ErrorOr<void>(const std::string&, int)> visit = [&](const std::string& name,
                                                                      int depth) -> ErrorOr<void> {
        if (depth > 8) return make_error(EPROTO, "target description: includes nest too deep");
        if (!seen.insert(name).second) return {};
        std::string xml = TRY_CTX(fetch(name), "reading " + name);
        if (architecture.empty()) architecture = xml_architecture(xml);
        std::string clean = strip_xml_comments(xml);
        size_t pos = 0;
        size_t reg = clean.find("<reg");
        size_t inc = clean.find("<xi:include");
        while (true) {
            // Search again only for what now lies behind pos, so that the document is
            // scanned once (not once per register, quadratic).
            if (reg != std::string::npos && reg < pos) reg = clean.find("<reg", pos);
            if (inc != std::string::npos && inc < pos) inc = clean.find("<xi:include", pos);
            if (reg == std::string::npos && inc == std::string::npos) break;
            if (inc < reg) {
                size_t end = clean.find('>', inc);
                if (end == std::string::npos) break;
                for (const auto& href : xml_includes(clean.substr(inc, end - inc + 1))) {
                    TRY(visit(href, depth + 1));
                }
                pos = end + 1;
            } else {
                size_t end = clean.find('>', reg);
                if (end == std::string::npos) break;
                auto regs = TRY_CTX(parse_reg_elements(clean.substr(reg, end - reg + 1)), name);
                for (auto& r : regs)
                    all.push_back(std::move(r));
                pos = end + 1;
            }
        }
        return {};
    };
    TRY(visit("target.xml", 0));
    if (all.empty()) return make_error(EPROTO, "target description lists no registers");
    auto layout = TRY(from_registers(std::move(all)));
    layout.architecture_ = architecture;
    return layout;
}

const RegisterInfo* RegisterLayout::find(std::string_view name) const {
    for (const auto& r : regs_) {
        if (r.name == name) return &r;
    }
    return nullptr;
}

}  // namespace cloudvmi::gdb
