// SHA-256 (OpenSSL's libcrypto): of audited change values and of guest files.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace cloudvmi {

// Lowercase hex, 64 digits ("" only if libcrypto fails).
std::string sha256_hex(std::span<const uint8_t> data);

inline std::string sha256_hex(std::string_view data) {
    return sha256_hex({reinterpret_cast<const uint8_t*>(data.data()), data.size()});
}

}  // namespace cloudvmi
