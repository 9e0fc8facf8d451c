// Connecting a non-blocking stream socket within a deadline (the gdbstub, QMP).
#pragma once

#include <cstdint>
#include <string>

#include "common/deadline.h"
#include "common/error.h"
#include "common/unique_fd.h"

namespace cloudvmi {

// A non-blocking, close-on-exec connection to a unix socket.
ErrorOr<UniqueFd> connect_unix_socket(const std::string& path, Deadline deadline);
// The same to host:port (every address it resolves to, in turn), with TCP_NODELAY.
ErrorOr<UniqueFd> connect_tcp_socket(const std::string& host, uint16_t port, Deadline deadline);

}  // namespace cloudvmi
