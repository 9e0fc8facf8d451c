// A connection to a GDB stub: socket, framing, acknowledgements, timeouts.
//
// Knows nothing about commands; GdbClient builds the command set on top.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "common/deadline.h"
#include "common/error.h"
#include "common/unique_fd.h"
#include "redirector/gdb/rsp_codec.h"

namespace cloudvmi::gdb {

// Where a stub listens: "unix:/path", "tcp:host:port", or a bare absolute path.
struct Endpoint {
    enum class Kind { kUnix, kTcp };
    Kind kind = Kind::kUnix;
    std::string path;  // kUnix
    std::string host;  // kTcp
    uint16_t port = 0;

    static ErrorOr<Endpoint> parse(std::string_view text);
    // Parses back (parse()) as the same endpoint: the recovery log relies on it.
    std::string to_string() const;
    // For a unix socket: its inode and change time, which change when QEMU restarts and
    // recreates it; 0 when unknown (tcp, or no such file).
    uint64_t identity() const;
};

class RspConnection {
  public:
    static ErrorOr<std::unique_ptr<RspConnection>> connect(const Endpoint& endpoint,
                                                           Deadline deadline);

    // Sends one packet. In ack mode a '-' from the peer makes us resend (a few times).
    ErrorOr<void> send_packet(std::string_view payload, Deadline deadline);

    // The next packet from the peer (acknowledged if in ack mode). Acks, notifications and
    // line noise are consumed on the way; a corrupted packet is NACKed and waited for again.
    ErrorOr<std::string> receive_packet(Deadline deadline);

    // Like receive_packet but returns nullopt if nothing complete arrives before the
    // deadline (not an error): used to drain unsolicited packets.
    ErrorOr<std::optional<std::string>> try_receive_packet(Deadline deadline);

    // Raw bytes, e.g. the 0x03 interrupt.
    ErrorOr<void> send_raw(std::string_view bytes, Deadline deadline);

    void set_ack_mode(bool on) { ack_mode_ = on; }
    bool ack_mode() const { return ack_mode_; }
    const Endpoint& endpoint() const { return endpoint_; }

    // The process at the other end of a unix socket (SO_PEERCRED); nullopt for tcp.
    std::optional<int> peer_pid() const;

    // Drops the connection; later calls fail with ENOTCONN.
    void close();
    bool closed() const { return !fd_.valid(); }

  private:
    RspConnection(UniqueFd fd, Endpoint endpoint);
    ErrorOr<void> write_all(std::string_view bytes, Deadline deadline);
    // Reads once (waiting until the deadline) and decodes; false if it timed out.
    ErrorOr<bool> read_some(Deadline deadline);
    ErrorOr<std::optional<std::string>> next_packet(Deadline deadline, bool timeout_is_error);

    UniqueFd fd_;
    Endpoint endpoint_;
    PacketDecoder decoder_;
    std::deque<WireEvent> events_;
    std::string last_sent_;
    bool ack_mode_ = true;
    int garbage_bytes_ = 0;
};

}  // namespace cloudvmi::gdb
