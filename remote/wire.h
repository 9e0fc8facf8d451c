// The wire protocol between a mount and `cloudvmi serve --stdio` on another node.
//
// A byte stream (ssh's stdin/stdout) carries frames: a 4-byte big-endian length, then that
// many bytes of one CBOR map. The client's first frame is a hello naming the protocol
// version it speaks; the server answers with its own, or with an error naming both, and
// hangs up. After that every frame is a request {id, op, ...} or the response {id, ...} to
// one; responses may come in any order, so many requests are in flight at once. An error
// response carries the errno and a message: {id, err, msg}.
//
// Everything read from the other side is checked here before use: a frame's size, that it
// is a map, and each field's type (Field accessors below). A malformed frame ends the
// connection with a message saying what was wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/error.h"

namespace cloudvmi::remote {

constexpr uint64_t kProtocolVersion = 1;
// Large enough for the biggest read we ask for (kMaxReadChunk) and its envelope.
constexpr size_t kMaxFrame = 4u << 20;
constexpr size_t kMaxReadChunk = 1u << 20;

using Message = nlohmann::json;

// The frame carrying `m`.
std::vector<uint8_t> encode_frame(const Message& m);

// Cuts a byte stream into messages.
class FrameReader {
  public:
    void feed(std::span<const uint8_t> bytes);
    // The next whole message; nullopt until one is complete. An error (oversized frame,
    // not CBOR, not a map) is final: the stream cannot be resynchronised.
    ErrorOr<std::optional<Message>> next();
    size_t buffered() const { return buffer_.size() - start_; }

  private:
    std::vector<uint8_t> buffer_;
    size_t start_ = 0;
};

// One CBOR map, checked to be one.
ErrorOr<Message> decode_message(std::span<const uint8_t> payload);

// Typed access to a received message's fields: a missing or mistyped field is EPROTO
// with the field's name.
ErrorOr<uint64_t> field_u64(const Message& m, const char* name);
ErrorOr<int64_t> field_i64(const Message& m, const char* name);
ErrorOr<std::string> field_string(const Message& m, const char* name);
ErrorOr<std::vector<uint8_t>> field_bytes(const Message& m, const char* name);
ErrorOr<bool> field_bool(const Message& m, const char* name);
ErrorOr<double> field_double(const Message& m, const char* name);
bool has_field(const Message& m, const char* name);

// Responses.
Message error_response(uint64_t id, const Error& e);
// The error an error response carries (its errno in 1..511, else EIO), or nullopt for a
// success.
std::optional<Error> response_error(const Message& response);

// The hello exchange; `host` names the mounting host (for the remote's audit trail).
Message hello_request(const std::string& host);
// The server's answer to a hello: its greeting, or the error to send before hanging up.
ErrorOr<Message> answer_hello(const Message& hello, const std::string& node);
// Checks the server's greeting.
ErrorOr<void> check_greeting(const Message& greeting);

}  // namespace cloudvmi::remote
