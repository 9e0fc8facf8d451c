// SHA-256 of file contents read from a guest (libcrypto).
#pragma once

#include <string>
#include <string_view>

namespace cloudvmi::apps {

// Lowercase hex, 64 digits.
std::string sha256_hex(std::string_view data);

}  // namespace cloudvmi::apps
