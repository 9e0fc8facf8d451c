// Non-blocking stream sockets (the gdbstub, QMP): connecting and sending within a deadline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/deadline.h"
#include "common/error.h"
#include "common/unique_fd.h"

namespace cloudvmi {

// A non-blocking, close-on-exec connection to a unix socket.
ErrorOr<UniqueFd> connect_unix_socket(const std::string& path, Deadline deadline);
// The same to host:port (every address it resolves to, in turn), with TCP_NODELAY.
ErrorOr<UniqueFd> connect_tcp_socket(const std::string& host, uint16_t port, Deadline deadline);

// Sends all of `bytes` before `deadline` ("sending to PEER ..." in errors). ETIMEDOUT
// leaves the connection usable; any other error means it is broken (a closed peer is
// ECONNRESET). `sent`, if given, says how much went out (a framed stream cut mid-frame
// is unusable, even after a timeout).
ErrorOr<void> send_all(int fd, std::string_view bytes, Deadline deadline, const std::string& peer,
                       size_t* sent = nullptr);

}  // namespace cloudvmi
