#include "nodes/domain_gdbserver.h"

#include <libvirt/libvirt-qemu.h>
#include <libvirt/libvirt.h>

#include <cstdlib>
#include <memory>

#include "common/strings.h"
#include "nodes/libvirt_error.h"

namespace cloudvmi::nodes {

namespace {

struct ConnClose {
    void operator()(virConnectPtr c) const { virConnectClose(c); }
};
struct DomainFree {
    void operator()(virDomainPtr d) const { virDomainFree(d); }
};

}  // namespace

ErrorOr<void> check_gdbserver_reply(const std::string& device, const std::string& reply) {
    // hmp_gdbserver(): "Waiting for gdb connection on device '...'", "Disabled gdbserver",
    // or "Could not open gdbserver on device '...'".
    bool ok = device == "none" ? reply.starts_with("Disabled gdbserver")
                               : reply.starts_with("Waiting for gdb connection");
    if (ok) return {};
    std::string said = reply;
    while (!said.empty() && (said.back() == '\n' || said.back() == '\r'))
        said.pop_back();
    return make_error(EIO, "QEMU refused \"gdbserver " + device +
                               "\": " + (said.empty() ? "no reply" : printable(said, 200)));
}

ErrorOr<void> set_domain_gdbserver(const std::string& uri, const std::string& uuid,
                                   const std::string& device) {
    std::unique_ptr<virConnect, ConnClose> conn(virConnectOpen(uri.c_str()));
    if (!conn) return std::unexpected(libvirt_error(ENOTCONN, "connecting to " + uri));
    std::unique_ptr<virDomain, DomainFree> dom(
        virDomainLookupByUUIDString(conn.get(), uuid.c_str()));
    if (!dom) return std::unexpected(libvirt_error(ENOENT, "domain " + uuid));
    char* reply = nullptr;
    std::string command = "gdbserver " + device;
    if (virDomainQemuMonitorCommand(dom.get(), command.c_str(), &reply,
                                    VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP) < 0)
        return std::unexpected(libvirt_error(EIO, "\"" + command + "\" through libvirt"));
    std::string text = reply != nullptr ? reply : "";
    std::free(reply);
    return check_gdbserver_reply(device, text);
}

}  // namespace cloudvmi::nodes
