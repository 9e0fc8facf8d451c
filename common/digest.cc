#include "common/digest.h"

#include <openssl/evp.h>

#include "common/strings.h"

namespace cloudvmi {

std::string sha256_hex(std::span<const uint8_t> data) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), digest, &len, EVP_sha256(), nullptr) != 1) return "";
    return hex_encode(std::span<const uint8_t>(digest, len));
}

}  // namespace cloudvmi
