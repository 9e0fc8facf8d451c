#include "remote/wire.h"

#include <cerrno>

namespace cloudvmi::remote {

namespace {

// Nested arrays and maps deeper than this are refused: the CBOR reader recurses once per
// level, and a hostile peer could otherwise exhaust the stack with a frame of '['s.
constexpr int kMaxDepth = 16;

// Builds the message as nlohmann's own DOM parser does, counting nesting on the way.
class BoundedSax : public nlohmann::json_sax<Message> {
  public:
    BoundedSax(Message& out, size_t payload) : dom_(out, false), payload_(payload) {}
    bool null() override { return dom_.null(); }
    bool boolean(bool v) override { return dom_.boolean(v); }
    bool number_integer(number_integer_t v) override { return dom_.number_integer(v); }
    bool number_unsigned(number_unsigned_t v) override { return dom_.number_unsigned(v); }
    bool number_float(number_float_t v, const string_t& s) override {
        return dom_.number_float(v, s);
    }
    bool string(string_t& v) override { return dom_.string(v); }
    bool binary(binary_t& v) override { return dom_.binary(v); }
    // A declared length is checked against the frame first: nlohmann throws on lengths it
    // cannot reserve, whatever the exception setting.
    bool start_object(std::size_t n) override {
        return ++depth_ <= kMaxDepth && plausible(n) && dom_.start_object(n);
    }
    bool key(string_t& v) override { return dom_.key(v); }
    bool end_object() override {
        --depth_;
        return dom_.end_object();
    }
    bool start_array(std::size_t n) override {
        return ++depth_ <= kMaxDepth && plausible(n) && dom_.start_array(n);
    }
    bool end_array() override {
        --depth_;
        return dom_.end_array();
    }
    bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception&) override {
        failed_ = true;
        return false;
    }
    bool too_deep() const { return depth_ > kMaxDepth; }
    bool failed() const { return failed_; }

  private:
    // Every element takes a byte at least; an indefinite length is size_t(-1).
    bool plausible(std::size_t n) const { return n == std::size_t(-1) || n <= payload_; }

    nlohmann::detail::json_sax_dom_parser<Message> dom_;
    size_t payload_;
    int depth_ = 0;
    bool failed_ = false;
};

Error field_error(const char* name, const char* what) {
    return Error(EPROTO, std::string("field '") + name + "' " + what);
}

uint32_t read_be32(const uint8_t* p) {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}

}  // namespace

std::vector<uint8_t> encode_frame(const Message& m) {
    std::vector<uint8_t> out(4);
    Message::to_cbor(m, out);
    uint32_t n = static_cast<uint32_t>(out.size() - 4);
    out[0] = uint8_t(n >> 24);
    out[1] = uint8_t(n >> 16);
    out[2] = uint8_t(n >> 8);
    out[3] = uint8_t(n);
    return out;
}

void FrameReader::feed(std::span<const uint8_t> bytes) {
    if (start_ > 0 && start_ == buffer_.size()) {
        buffer_.clear();
        start_ = 0;
    }
    buffer_.insert(buffer_.end(), bytes.begin(), bytes.end());
}

ErrorOr<std::optional<Message>> FrameReader::next() {
    if (buffered() < 4) return std::optional<Message>();
    uint32_t n = read_be32(buffer_.data() + start_);
    if (n == 0 || n > kMaxFrame) {
        return make_error(EPROTO, "frame of " + std::to_string(n) + " bytes (limit " +
                                      std::to_string(kMaxFrame) + "): not a cloudvmi peer?");
    }
    if (buffered() < 4 + size_t(n)) return std::optional<Message>();
    auto payload = std::span<const uint8_t>(buffer_.data() + start_ + 4, n);
    start_ += 4 + size_t(n);
    auto message = TRY(decode_message(payload));
    // Compact once the consumed prefix dominates, so the buffer stays bounded.
    if (start_ > (1u << 16) && start_ * 2 > buffer_.size()) {
        buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(start_));
        start_ = 0;
    }
    return std::optional<Message>(std::move(message));
}

ErrorOr<Message> decode_message(std::span<const uint8_t> payload) {
    Message out;
    BoundedSax sax(out, payload.size());
    bool ok = false;
    try {
        ok = Message::sax_parse(payload.begin(), payload.end(), &sax,
                                nlohmann::detail::input_format_t::cbor, true);
    } catch (const std::exception&) {
        ok = false;  // whatever the library still throws is a malformed frame
    }
    if (sax.too_deep()) {
        return make_error(EPROTO, "frame nested deeper than " + std::to_string(kMaxDepth));
    }
    if (!ok || sax.failed()) return make_error(EPROTO, "frame is not a CBOR value");
    if (!out.is_object()) return make_error(EPROTO, "frame is not a map");
    return out;
}

bool has_field(const Message& m, const char* name) {
    return m.is_object() && m.contains(name) && !m[name].is_null();
}

namespace {

// The field every typed accessor starts from.
ErrorOr<const Message*> present(const Message& m, const char* name) {
    if (!has_field(m, name)) return std::unexpected(field_error(name, "is missing"));
    return &m[name];
}

}  // namespace

ErrorOr<uint64_t> field_u64(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    // Built in memory, a non-negative number may be signed; from CBOR it is unsigned.
    if (v.is_number_integer() && !v.is_number_unsigned() && v.get<int64_t>() >= 0)
        return static_cast<uint64_t>(v.get<int64_t>());
    if (!v.is_number_unsigned()) return std::unexpected(field_error(name, "is not unsigned"));
    return v.get<uint64_t>();
}

ErrorOr<int64_t> field_i64(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    if (v.is_number_unsigned()) {
        uint64_t u = v.get<uint64_t>();
        if (u > uint64_t(INT64_MAX)) return std::unexpected(field_error(name, "is too large"));
        return static_cast<int64_t>(u);
    }
    if (!v.is_number_integer()) return std::unexpected(field_error(name, "is not an integer"));
    return v.get<int64_t>();
}

ErrorOr<std::string> field_string(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    if (!v.is_string()) return std::unexpected(field_error(name, "is not a string"));
    return v.get<std::string>();
}

ErrorOr<std::vector<uint8_t>> field_bytes(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    if (!v.is_binary()) return std::unexpected(field_error(name, "is not a byte string"));
    return std::vector<uint8_t>(v.get_binary().begin(), v.get_binary().end());
}

ErrorOr<bool> field_bool(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    if (!v.is_boolean()) return std::unexpected(field_error(name, "is not a boolean"));
    return v.get<bool>();
}

ErrorOr<double> field_double(const Message& m, const char* name) {
    const Message& v = *TRY(present(m, name));
    if (!v.is_number()) return std::unexpected(field_error(name, "is not a number"));
    return v.get<double>();
}

Message error_response(uint64_t id, const Error& e) {
    const char* kind = e.from_guest()    ? "guest"
                       : e.refused()     ? "refused"
                       : e.unavailable() ? "unavailable"
                                         : "host";
    return Message{{"id", id}, {"err", e.code()}, {"msg", e.message()}, {"kind", kind}};
}

std::optional<Error> response_error(const Message& response) {
    if (!has_field(response, "err")) return std::nullopt;
    auto code = field_i64(response, "err");
    int err = code && *code >= 1 && *code <= 511 ? static_cast<int>(*code) : EIO;
    auto msg = field_string(response, "msg");
    std::string text = msg ? *msg : "error from the remote node";
    // The remote node already decided what its caller may see (vm_error there): its errno
    // reaches ours unchanged, with what kind of answer it was (for the log).
    auto kind = field_string(response, "kind");
    if (kind && *kind == "guest") return Error::guest(err, std::move(text));
    if (kind && *kind == "refused") return Error::refusal(err, std::move(text));
    if (kind && *kind == "unavailable") return Error::unavailable(err, std::move(text));
    return Error(err, "on the remote node: " + text);
}

Message hello_request(const std::string& host) {
    return Message{{"id", 0}, {"op", "hello"}, {"version", kProtocolVersion}, {"host", host}};
}

ErrorOr<Message> answer_hello(const Message& hello, const std::string& node) {
    auto op = TRY(field_string(hello, "op"));
    if (op != "hello") return make_error(EPROTO, "the first frame is '" + op + "', not a hello");
    auto version = TRY(field_u64(hello, "version"));
    if (version != kProtocolVersion) {
        return make_error(EPROTONOSUPPORT, "protocol version " + std::to_string(version) +
                                               " is not supported (this server speaks " +
                                               std::to_string(kProtocolVersion) + ")");
    }
    return Message{{"id", 0}, {"version", kProtocolVersion}, {"node", node}};
}

ErrorOr<void> check_greeting(const Message& greeting) {
    if (auto e = response_error(greeting)) {
        return make_error(e->code(), "the remote refused the connection: " + e->message());
    }
    auto version = TRY(field_u64(greeting, "version"));
    if (version != kProtocolVersion) {
        return make_error(EPROTONOSUPPORT, "the remote speaks protocol version " +
                                               std::to_string(version) + ", this mount " +
                                               std::to_string(kProtocolVersion));
    }
    return {};
}

}  // namespace cloudvmi::remote
