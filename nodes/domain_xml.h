// What cloudvmi needs from a libvirt domain's XML description: its identity and the
// debug and monitor sockets declared on its QEMU command line.
//
// The XML is the domain owner's text (anything may stand in <qemu:commandline>): it is
// parsed without network access or entity expansion, and only the few elements below are
// looked at.
#pragma once

#include <string>
#include <string_view>

#include "common/error.h"

namespace cloudvmi::nodes {

struct DomainDescription {
    std::string name;
    std::string uuid;
    // The gdbstub the command line declares (`-gdb unix:PATH,server=on,wait=off`,
    // `-gdb tcp::1234`, `-s`), as a cloudvmi endpoint ("unix:PATH", "tcp:HOST:PORT");
    // "" if none.
    std::string gdb;
    // A QMP socket on the command line besides libvirt's own monitor (`-qmp unix:PATH,...`),
    // for cloudvmi's run-state checks; "" if none.
    std::string qmp;
};

// Parses a domain XML document. EINVAL with the reason for anything that is not one.
ErrorOr<DomainDescription> parse_domain_xml(std::string_view xml);

// A QEMU character device address as a cloudvmi endpoint: "unix:/p,server=on" -> "unix:/p",
// "tcp::1234" -> "tcp:localhost:1234", "tcp:h:5,server" -> "tcp:h:5"; "" for other kinds.
std::string endpoint_from_chardev(std::string_view address);

}  // namespace cloudvmi::nodes
