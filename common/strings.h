// Small string helpers shared by every layer.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace cloudvmi {

// printf-style formatting into a std::string (g++ 12 has no <format>).
std::string strformat(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// "0x" + lowercase hex.
std::string hex_u64(uint64_t v);

// Lowercase hex of raw bytes, two digits per byte.
std::string hex_encode(std::span<const uint8_t> bytes);

// Decodes pairs of hex digits; nullopt on odd length or a non-hex character.
std::optional<std::vector<uint8_t>> hex_decode(std::string_view hex);

// Parses an unsigned hex number (no prefix); nullopt if empty, invalid or over 64 bits.
std::optional<uint64_t> parse_hex_u64(std::string_view hex);

// Parses a decimal or 0x-prefixed unsigned number.
std::optional<uint64_t> parse_u64(std::string_view text);

// Printable rendering of untrusted bytes for error messages: escapes control characters
// and cuts at max_len.
std::string printable(std::string_view raw, size_t max_len = 64);

std::vector<std::string_view> split(std::string_view s, char sep);

// The non-empty runs between spaces and tabs ("a \tb " -> a, b).
std::vector<std::string_view> split_fields(std::string_view line);

// A whole decimal number (as from_chars reads it), finite; nullopt for anything else
// ("", "1x", "inf", "nan").
std::optional<double> parse_double(std::string_view text);

inline bool starts_with(std::string_view s, std::string_view prefix) {
    return s.substr(0, prefix.size()) == prefix;
}

}  // namespace cloudvmi
