// Small helpers shared by the unit tests: fixture files and byte buffers.
#pragma once

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace cloudvmi::test {

inline std::string data_path(const std::string& relative) {
    return std::string(CLOUDVMI_TEST_DATA) + "/" + relative;
}

// Whole fixture file as text; throws (failing the test) when it is missing.
inline std::string read_text(const std::string& relative) {
    std::ifstream in(data_path(relative), std::ios::binary);
    if (!in) throw std::runtime_error("missing fixture " + data_path(relative));
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline std::vector<uint8_t> read_bytes(const std::string& relative) {
    std::string s = read_text(relative);
    return std::vector<uint8_t>(s.begin(), s.end());
}

// "key=hexvalue" lines, as in tests/data/kernel-*/meta.txt.
inline std::map<std::string, uint64_t> read_hex_meta(const std::string& relative) {
    std::map<std::string, uint64_t> out;
    std::istringstream in(read_text(relative));
    std::string line;
    while (std::getline(in, line)) {
        auto eq = line.find('=');
        if (eq == std::string::npos) continue;
        out[line.substr(0, eq)] = std::stoull(line.substr(eq + 1), nullptr, 16);
    }
    return out;
}

inline void put_u64(std::vector<uint8_t>& buf, size_t offset, uint64_t v) {
    if (buf.size() < offset + 8) buf.resize(offset + 8, 0);
    std::memcpy(buf.data() + offset, &v, 8);
}

inline void put_u32(std::vector<uint8_t>& buf, size_t offset, uint32_t v) {
    if (buf.size() < offset + 4) buf.resize(offset + 4, 0);
    std::memcpy(buf.data() + offset, &v, 4);
}

inline void put_u16(std::vector<uint8_t>& buf, size_t offset, uint16_t v) {
    if (buf.size() < offset + 2) buf.resize(offset + 2, 0);
    std::memcpy(buf.data() + offset, &v, 2);
}

inline uint64_t get_u64(const std::vector<uint8_t>& buf, size_t offset) {
    if (buf.size() < offset + 8) throw std::out_of_range("get_u64 beyond the buffer");
    uint64_t v;
    std::memcpy(&v, buf.data() + offset, 8);
    return v;
}

inline std::vector<uint8_t> bytes_of(const std::string& s) {
    return std::vector<uint8_t>(s.begin(), s.end());
}

}  // namespace cloudvmi::test
