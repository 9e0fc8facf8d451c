// GDB remote serial protocol: the pure byte-level codec.
//
// No I/O here, so every rule of the wire format (framing, checksums, acks, '}' escapes,
// '*' run-length encoding, notifications) is unit-tested on recorded bytes. The socket
// side lives in rsp_connection.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace cloudvmi::gdb {

// Sum of bytes modulo 256, as the protocol defines the checksum.
uint8_t checksum(std::string_view bytes);

// Escapes '$', '#', '}' and '*' (the last so a peer never mistakes data for RLE).
std::string escape_payload(std::string_view payload);

// "$<escaped payload>#<checksum>"
std::string encode_packet(std::string_view payload);

// Undoes '}' escapes and '*' run-length encoding in received packet data.
// Returns nullopt for a malformed body (dangling escape, RLE with nothing to repeat,
// an out-of-range count) or when the expansion would exceed max_size.
std::optional<std::string> expand_payload(std::string_view raw, size_t max_size);

struct WireEvent {
    enum class Kind {
        kAck,           // '+'
        kNack,          // '-': the peer wants our last packet again
        kPacket,        // '$...#cc' with a good checksum; payload is expanded
        kNotification,  // '%...#cc' (async notification); payload is expanded
        kBadPacket,     // checksum mismatch or malformed body: must be answered with '-'
        kInterrupt,     // 0x03 outside a packet (only a stub would receive it)
        kGarbage,       // any other byte outside a packet
    };
    Kind kind;
    std::string payload;  // kPacket/kNotification: decoded data; kGarbage: the byte
};

// Incremental decoder: feed it whatever recv() returned, collect events.
class PacketDecoder {
  public:
    explicit PacketDecoder(size_t max_packet_size = 1 << 20) : max_packet_size_(max_packet_size) {}

    void feed(std::string_view bytes, std::vector<WireEvent>& out);

    // True while in the middle of a packet.
    bool mid_packet() const { return state_ != State::kIdle; }
    void reset();

  private:
    enum class State { kIdle, kBody, kChecksum1, kChecksum2 };

    void finish_packet(std::vector<WireEvent>& out);

    size_t max_packet_size_;
    State state_ = State::kIdle;
    bool notification_ = false;
    bool overflow_ = false;
    std::string raw_;
    uint8_t running_sum_ = 0;
    int checksum_hi_ = 0;
    int checksum_lo_ = 0;
};

// A thread id as the stub prints it: "p01.02" with the multiprocess extension, "02" without.
struct ThreadId {
    int64_t pid = -1;  // -1 when absent
    int64_t tid = 0;   // 0 = any thread, -1 = all threads

    std::string to_string(bool multiprocess) const;
    static std::optional<ThreadId> parse(std::string_view text);
    bool operator==(const ThreadId&) const = default;
};

// A parsed stop reply ('S', 'T', 'W', 'X').
struct StopReply {
    enum class Kind { kSignal, kExited, kTerminated };
    Kind kind = Kind::kSignal;
    int signal = 0;  // signal number, or exit status for kExited
    std::optional<ThreadId> thread;
    bool swbreak = false;
    bool hwbreak = false;
    std::optional<uint64_t> watch_address;
};

// Parses a stop reply; nullopt when the payload is not one.
std::optional<StopReply> parse_stop_reply(std::string_view payload);

// "E01"-style error replies.
bool is_error_reply(std::string_view payload);

}  // namespace cloudvmi::gdb
