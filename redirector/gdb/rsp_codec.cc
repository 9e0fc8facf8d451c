#include "redirector/gdb/rsp_codec.h"

#include "common/strings.h"

namespace cloudvmi::gdb {

namespace {

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

bool needs_escape(char c) {
    return c == '$' || c == '#' || c == '}' || c == '*';
}

}  // namespace

uint8_t checksum(std::string_view bytes) {
    uint8_t sum = 0;
    for (char c : bytes)
        sum = static_cast<uint8_t>(sum + static_cast<uint8_t>(c));
    return sum;
}

std::string escape_payload(std::string_view payload) {
    std::string out;
    out.reserve(payload.size() + 8);
    for (char c : payload) {
        if (needs_escape(c)) {
            out += '}';
            out += static_cast<char>(c ^ 0x20);
        } else {
            out += c;
        }
    }
    return out;
}

std::string encode_packet(std::string_view payload) {
    std::string body = escape_payload(payload);
    // Not "%s": the body may hold NUL bytes.
    return "$" + body + strformat("#%02x", checksum(body));
}

std::optional<std::string> expand_payload(std::string_view raw, size_t max_size) {
    std::string out;
    out.reserve(raw.size());
    for (size_t i = 0; i < raw.size(); ++i) {
        char c = raw[i];
        if (c == '}') {
            if (i + 1 >= raw.size()) return std::nullopt;
            out += static_cast<char>(raw[++i] ^ 0x20);
        } else if (c == '*') {
            // The count character n means "repeat the previous byte n - 29 more times".
            if (out.empty() || i + 1 >= raw.size()) return std::nullopt;
            int n = static_cast<unsigned char>(raw[++i]);
            if (n < 29 + 3 || n > 126) return std::nullopt;
            out.append(static_cast<size_t>(n - 29), out.back());
        } else {
            out += c;
        }
        if (out.size() > max_size) return std::nullopt;
    }
    return out;
}

void PacketDecoder::reset() {
    state_ = State::kIdle;
    raw_.clear();
    running_sum_ = 0;
    overflow_ = false;
}

void PacketDecoder::feed(std::string_view bytes, std::vector<WireEvent>& out) {
    for (char c : bytes) {
        switch (state_) {
            case State::kIdle:
                if (c == '$' || c == '%') {
                    notification_ = (c == '%');
                    raw_.clear();
                    running_sum_ = 0;
                    overflow_ = false;
                    state_ = State::kBody;
                } else if (c == '+') {
                    out.push_back({WireEvent::Kind::kAck, {}});
                } else if (c == '-') {
                    out.push_back({WireEvent::Kind::kNack, {}});
                } else if (c == '\x03') {
                    out.push_back({WireEvent::Kind::kInterrupt, {}});
                } else {
                    out.push_back({WireEvent::Kind::kGarbage, std::string(1, c)});
                }
                break;
            case State::kBody:
                if (c == '#') {
                    state_ = State::kChecksum1;
                } else {
                    running_sum_ = static_cast<uint8_t>(running_sum_ + static_cast<uint8_t>(c));
                    if (raw_.size() < max_packet_size_) {
                        raw_ += c;
                    } else {
                        overflow_ = true;
                    }
                }
                break;
            case State::kChecksum1:
                checksum_hi_ = hex_digit(c);
                state_ = State::kChecksum2;
                break;
            case State::kChecksum2:
                checksum_lo_ = hex_digit(c);
                finish_packet(out);
                state_ = State::kIdle;
                break;
        }
    }
}

void PacketDecoder::finish_packet(std::vector<WireEvent>& out) {
    bool sum_ok = checksum_hi_ >= 0 && checksum_lo_ >= 0 &&
                  static_cast<uint8_t>(checksum_hi_ << 4 | checksum_lo_) == running_sum_;
    std::optional<std::string> payload;
    if (sum_ok && !overflow_) payload = expand_payload(raw_, max_packet_size_);
    if (!payload) {
        out.push_back({WireEvent::Kind::kBadPacket, raw_.substr(0, 64)});
    } else {
        out.push_back({notification_ ? WireEvent::Kind::kNotification : WireEvent::Kind::kPacket,
                       std::move(*payload)});
    }
    raw_.clear();
}

std::string ThreadId::to_string(bool multiprocess) const {
    auto part = [](int64_t v) {
        return v < 0 ? std::string("-1") : strformat("%llx", static_cast<unsigned long long>(v));
    };
    if (multiprocess && pid != -1) return "p" + part(pid) + "." + part(tid);
    return part(tid);
}

std::optional<ThreadId> ThreadId::parse(std::string_view text) {
    auto parse_part = [](std::string_view s) -> std::optional<int64_t> {
        if (s == "-1") return -1;
        auto v = parse_hex_u64(s);
        if (!v || *v > 0x7fffffffffffffffULL) return std::nullopt;
        return static_cast<int64_t>(*v);
    };
    ThreadId id;
    if (!text.empty() && text[0] == 'p') {
        auto dot = text.find('.');
        auto pid = parse_part(text.substr(1, dot == std::string_view::npos ? text.npos : dot - 1));
        if (!pid) return std::nullopt;
        id.pid = *pid;
        if (dot == std::string_view::npos) {
            id.tid = -1;  // "pPID" alone means all threads of the process
            return id;
        }
        auto tid = parse_part(text.substr(dot + 1));
        if (!tid) return std::nullopt;
        id.tid = *tid;
        return id;
    }
    auto tid = parse_part(text);
    if (!tid) return std::nullopt;
    id.tid = *tid;
    return id;
}

std::optional<StopReply> parse_stop_reply(std::string_view p) {
    if (p.size() < 3) return std::nullopt;
    StopReply r;
    auto sig = parse_hex_u64(p.substr(1, 2));
    switch (p[0]) {
        case 'S':
        case 'T':
            if (!sig) return std::nullopt;
            r.kind = StopReply::Kind::kSignal;
            r.signal = static_cast<int>(*sig);
            break;
        case 'W':
        case 'X': {
            // W/X carry a variable-length hex value, optionally followed by ";process:PID".
            auto semi = p.find(';');
            auto v = parse_hex_u64(p.substr(1, semi == p.npos ? p.npos : semi - 1));
            if (!v) return std::nullopt;
            r.kind = p[0] == 'W' ? StopReply::Kind::kExited : StopReply::Kind::kTerminated;
            r.signal = static_cast<int>(*v);
            return r;
        }
        default:
            return std::nullopt;
    }
    if (p[0] == 'S') return r;
    // T: "nn" then "key:value;" pairs.
    for (auto field : split(p.substr(3), ';')) {
        if (field.empty()) continue;
        auto colon = field.find(':');
        auto key = field.substr(0, colon);
        auto value = colon == field.npos ? std::string_view() : field.substr(colon + 1);
        if (key == "thread") {
            r.thread = ThreadId::parse(value);
            if (!r.thread) return std::nullopt;
        } else if (key == "swbreak") {
            r.swbreak = true;
        } else if (key == "hwbreak") {
            r.hwbreak = true;
        } else if (key == "watch" || key == "rwatch" || key == "awatch") {
            r.watch_address = parse_hex_u64(value);
        }
    }
    return r;
}

bool is_error_reply(std::string_view payload) {
    return payload.size() == 3 && payload[0] == 'E' && hex_digit(payload[1]) >= 0 &&
           hex_digit(payload[2]) >= 0;
}

}  // namespace cloudvmi::gdb
