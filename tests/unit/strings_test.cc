// common/strings.h: hex conversions, number parsing, printable, split.
#include "common/strings.h"

#include <catch2/catch.hpp>
#include <limits>

using namespace cloudvmi;

TEST_CASE("hex_encode writes two lowercase digits per byte", "[strings]") {
    CHECK(hex_encode({}) == "");
    const std::vector<uint8_t> bytes = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xff};
    CHECK(hex_encode(bytes) == "00017f80abff");
}

TEST_CASE("hex_decode accepts both cases and round-trips every byte value", "[strings]") {
    auto empty = hex_decode("");
    REQUIRE(empty.has_value());
    CHECK(empty->empty());

    auto mixed = hex_decode("00fFaB7f");
    REQUIRE(mixed.has_value());
    CHECK(*mixed == std::vector<uint8_t>{0x00, 0xff, 0xab, 0x7f});

    std::vector<uint8_t> all(256);
    for (size_t i = 0; i < all.size(); ++i)
        all[i] = static_cast<uint8_t>(i);
    auto round = hex_decode(hex_encode(all));
    REQUIRE(round.has_value());
    CHECK(*round == all);
}

TEST_CASE("hex_decode rejects odd lengths and non-hex characters", "[strings]") {
    CHECK_FALSE(hex_decode("0").has_value());
    CHECK_FALSE(hex_decode("abc").has_value());
    CHECK_FALSE(hex_decode("0g").has_value());
    CHECK_FALSE(hex_decode("g0").has_value());
    CHECK_FALSE(hex_decode("0x00").has_value());
    CHECK_FALSE(hex_decode(" 0").has_value());
    CHECK_FALSE(hex_decode(std::string_view("0\0", 2)).has_value());
}

TEST_CASE("parse_hex_u64 parses up to 64 bits without a prefix", "[strings]") {
    CHECK(parse_hex_u64("0") == std::optional<uint64_t>(0));
    CHECK(parse_hex_u64("1f") == std::optional<uint64_t>(0x1f));
    CHECK(parse_hex_u64("DeadBeef") == std::optional<uint64_t>(0xdeadbeef));
    CHECK(parse_hex_u64("ffffffffffffffff") ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    CHECK(parse_hex_u64("ffffffffb1600080") == std::optional<uint64_t>(0xffffffffb1600080ULL));

    CHECK_FALSE(parse_hex_u64("").has_value());
    CHECK_FALSE(parse_hex_u64("1ffffffffffffffff").has_value());  // 65 bits
    CHECK_FALSE(parse_hex_u64("0x10").has_value());               // no prefix allowed
    CHECK_FALSE(parse_hex_u64("-1").has_value());
    CHECK_FALSE(parse_hex_u64("12 ").has_value());
    CHECK_FALSE(parse_hex_u64("g").has_value());
}

TEST_CASE("parse_u64 parses decimal and 0x-prefixed hex, rejecting overflow", "[strings]") {
    CHECK(parse_u64("0") == std::optional<uint64_t>(0));
    CHECK(parse_u64("42") == std::optional<uint64_t>(42));
    CHECK(parse_u64("0x2a") == std::optional<uint64_t>(42));
    CHECK(parse_u64("0X2A") == std::optional<uint64_t>(42));
    CHECK(parse_u64("007") == std::optional<uint64_t>(7));
    CHECK(parse_u64("00000000000000000001") == std::optional<uint64_t>(1));  // 20 digits
    CHECK(parse_u64("18446744073709551615") ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));
    CHECK(parse_u64("0xffffffffffffffff") ==
          std::optional<uint64_t>(std::numeric_limits<uint64_t>::max()));

    SECTION("overflow") {
        CHECK_FALSE(parse_u64("18446744073709551616").has_value());  // 2^64
        CHECK_FALSE(parse_u64("18446744073709551619").has_value());
        CHECK_FALSE(parse_u64("18446744073709551620").has_value());
        CHECK_FALSE(parse_u64("19999999999999999999").has_value());
        CHECK_FALSE(parse_u64("99999999999999999999").has_value());
        CHECK_FALSE(parse_u64("184467440737095516150").has_value());  // 21 digits
        CHECK_FALSE(parse_u64("0x10000000000000000").has_value());
    }
    SECTION("empty and malformed") {
        CHECK_FALSE(parse_u64("").has_value());
        CHECK_FALSE(parse_u64("0x").has_value());
        CHECK_FALSE(parse_u64("-1").has_value());
        CHECK_FALSE(parse_u64("+1").has_value());
        CHECK_FALSE(parse_u64(" 1").has_value());
        CHECK_FALSE(parse_u64("12a").has_value());
        CHECK_FALSE(parse_u64("0x1g").has_value());
        CHECK_FALSE(parse_u64("1.5").has_value());
    }
}

TEST_CASE("printable escapes control bytes and backslashes and cuts long input", "[strings]") {
    CHECK(printable("hello world") == "hello world");
    CHECK(printable("a\nb") == "a\\x0ab");
    CHECK(printable("\\") == "\\x5c");
    CHECK(printable(std::string_view("\0\x7f\x80\xff", 4)) == "\\x00\\x7f\\x80\\xff");
    CHECK(printable("~ !") == "~ !");

    CHECK(printable("abcdef", 3) == "abc...");
    CHECK(printable("abc", 3) == "abc");
    CHECK(printable("", 3) == "");
    CHECK(printable(std::string(100, 'x')) == std::string(64, 'x') + "...");
}

TEST_CASE("split keeps empty fields", "[strings]") {
    using V = std::vector<std::string_view>;
    CHECK(split("a,b,c", ',') == V{"a", "b", "c"});
    CHECK(split("a,,c", ',') == V{"a", "", "c"});
    CHECK(split("abc", ',') == V{"abc"});
    CHECK(split("", ',') == V{""});
    CHECK(split(",", ',') == V{"", ""});
    CHECK(split("a;", ';') == V{"a", ""});
    CHECK(split(";a", ';') == V{"", "a"});
}

TEST_CASE("strformat, hex_u64 and starts_with", "[strings]") {
    CHECK(strformat("%d-%s", 7, "x") == "7-x");
    CHECK(strformat("%s", "") == "");
    std::string big(5000, 'q');
    CHECK(strformat("<%s>", big.c_str()) == "<" + big + ">");

    CHECK(hex_u64(0) == "0x0");
    CHECK(hex_u64(0xdeadbeef) == "0xdeadbeef");
    CHECK(hex_u64(0xffffffffffffffffULL) == "0xffffffffffffffff");

    CHECK(starts_with("qSupported:xyz", "qSupported"));
    CHECK(starts_with("abc", ""));
    CHECK_FALSE(starts_with("ab", "abc"));
    CHECK_FALSE(starts_with("xabc", "abc"));
}
