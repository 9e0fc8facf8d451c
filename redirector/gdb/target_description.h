// The register layout a stub announces in its qXfer target description.
//
// QEMU's 'g' packet order and the numbers for 'p'/'P' come from this XML, so the layout
// is read from the stub rather than hard-coded (Debian's QEMU 7.2 file, for instance,
// carries commented-out *_base registers that a fixed table would get wrong).
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace cloudvmi::gdb {

struct RegisterInfo {
    std::string name;
    int regnum = 0;     // number used by 'p'/'P'
    size_t bytes = 0;   // size in the 'g' packet
    size_t offset = 0;  // byte offset in the 'g' packet
};

// Fetches an XML document by name (target.xml, i386-64bit.xml, ...).
using XmlFetcher = std::function<ErrorOr<std::string>(const std::string& name)>;

class RegisterLayout {
  public:
    // Parses the target description starting from "target.xml", following xi:include.
    static ErrorOr<RegisterLayout> load(const XmlFetcher& fetch);

    // Builds a layout from already parsed <reg> elements (tests, fakes).
    static ErrorOr<RegisterLayout> from_registers(std::vector<RegisterInfo> regs);

    const RegisterInfo* find(std::string_view name) const;
    const std::vector<RegisterInfo>& registers() const { return regs_; }
    // Bytes of the complete register file in a 'g' reply.
    size_t total_bytes() const { return total_bytes_; }
    std::string architecture() const { return architecture_; }

  private:
    std::vector<RegisterInfo> regs_;
    size_t total_bytes_ = 0;
    std::string architecture_;
};

// --- pure helpers, exposed for tests ---

// Removes <!-- ... --> comments.
std::string strip_xml_comments(std::string_view xml);

// The href of every <xi:include href="..."/> in document order.
std::vector<std::string> xml_includes(std::string_view xml);

// The <reg> elements in document order (regnum: -1 when the element has none).
ErrorOr<std::vector<RegisterInfo>> parse_reg_elements(std::string_view xml);

// Text of <architecture>...</architecture>, or empty.
std::string xml_architecture(std::string_view xml);

}  // namespace cloudvmi::gdb
