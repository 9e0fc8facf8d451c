// A domain's gdbstub opened and closed on demand, through libvirt's QEMU monitor
// passthrough (HMP "gdbserver DEVICE"), for domains whose XML declares none.
//
// libvirt marks the domain "tainted: custom-monitor" the first time. It reports success
// even when QEMU refused the command: QEMU's own reply text is what tells.
#pragma once

#include <string>

#include "common/error.h"

namespace cloudvmi::nodes {

// `device`: "unix:PATH,server=on,wait=off" to open, "none" to close. A connection of its
// own each time (the node's may be reconnecting).
ErrorOr<void> set_domain_gdbserver(const std::string& uri, const std::string& uuid,
                                   const std::string& device);

// QEMU's HMP reply to "gdbserver DEVICE": ok, or EIO with QEMU's words.
ErrorOr<void> check_gdbserver_reply(const std::string& device, const std::string& reply);

}  // namespace cloudvmi::nodes
