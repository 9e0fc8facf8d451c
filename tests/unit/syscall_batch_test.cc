// redirector/shadow/syscall_batch.h: buffer layout, validation, the binary op records the shadow
// executes (checked against redirector/shadow/shadow_layout.h), and reading results back.
#include "redirector/shadow/syscall_batch.h"

#include <catch2/catch.hpp>

#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"
#include "tests/unit/test_helpers.h"

using namespace cloudvmi;
using B = SyscallBatch;

namespace {

constexpr uint64_t kDataArea = 0x7f0000006000ULL;  // region + SHADOW_DATA_OFFSET
constexpr uint64_t kCanceled = static_cast<uint64_t>(-static_cast<int64_t>(ECANCELED));

uint64_t neg(int64_t errno_value) {
    return static_cast<uint64_t>(-errno_value);
}

uint64_t record_field(const EncodedBatch& enc, size_t op, size_t field) {
    return test::get_u64(enc.op_records, BATCH_HEADER_SIZE + op * OP_SIZE + field);
}

uint64_t record_arg(const EncodedBatch& enc, size_t op, size_t arg) {
    return record_field(enc, op, OP_ARGS + arg * 8);
}

std::vector<uint8_t> records_with_results(const std::vector<uint64_t>& results) {
    std::vector<uint8_t> rec(BATCH_HEADER_SIZE + results.size() * OP_SIZE, 0xee);
    for (size_t i = 0; i < results.size(); ++i) {
        test::put_u64(rec, BATCH_HEADER_SIZE + i * OP_SIZE + OP_RESULT, results[i]);
    }
    return rec;
}

}  // namespace

TEST_CASE("shadow layout constants are self-consistent", "[batch]") {
    STATIC_REQUIRE(OP_ARGS + 6 * 8 == OP_REFS);
    STATIC_REQUIRE(OP_RESULT + 8 == OP_SIZE);
    STATIC_REQUIRE(BATCH_HEADER_SIZE + SHADOW_MAX_OPS * OP_SIZE <= SHADOW_OPS_SIZE);
    STATIC_REQUIRE(SHADOW_OPS_OFFSET + SHADOW_OPS_SIZE <= SHADOW_DATA_OFFSET);
    STATIC_REQUIRE(SHADOW_CTRL_OFFSET + CTRL_SCRATCH + CTRL_SCRATCH_SIZE <= SHADOW_OPS_OFFSET);
    STATIC_REQUIRE(SHADOW_DATA_OFFSET + SHADOW_DATA_SIZE == SHADOW_REGION_SIZE);
}

TEST_CASE("buffers are laid out back to back, 16-byte aligned", "[batch]") {
    SyscallBatch b;
    CHECK(b.empty());
    CHECK(b.data_bytes() == 0);

    const std::vector<uint8_t> three = {1, 2, 3};
    auto in = b.input(three);
    auto out = b.output(100);
    auto str = b.input_string("hi");
    auto exact = b.output(16);
    auto empty_out = b.output(0);
    auto after = b.input_string("");

    const auto& bufs = b.buffers();
    REQUIRE(bufs.size() == 6);
    CHECK(in == 0);
    CHECK(out == 1);
    CHECK(str == 2);
    CHECK(exact == 3);
    CHECK(empty_out == 4);
    CHECK(after == 5);

    CHECK(bufs[in].offset == 0);
    CHECK(bufs[in].size == 3);
    CHECK(bufs[in].input == three);
    CHECK_FALSE(bufs[in].is_output);

    CHECK(bufs[out].offset == 16);
    CHECK(bufs[out].size == 100);
    CHECK(bufs[out].is_output);
    CHECK(bufs[out].input.empty());

    CHECK(bufs[str].offset == 128);  // 16 + 100 rounded up
    CHECK(bufs[str].size == 3);
    CHECK(bufs[str].input == std::vector<uint8_t>{'h', 'i', 0});

    CHECK(bufs[exact].offset == 144);
    CHECK(bufs[empty_out].offset == 160);
    CHECK(bufs[after].offset == 160);  // a zero-sized buffer takes no room
    CHECK(bufs[after].size == 1);
    CHECK(bufs[after].input == std::vector<uint8_t>{0});
    CHECK(b.data_bytes() == 176);

    for (const auto& buf : bufs)
        CHECK(buf.offset % 16 == 0);
    CHECK(b.empty());  // buffers alone are not ops
}

TEST_CASE("input_string copies embedded bytes and terminates", "[batch]") {
    SyscallBatch b;
    auto s = b.input_string(std::string_view("a\0b", 3));
    CHECK(b.buffers()[s].input == std::vector<uint8_t>{'a', 0, 'b', 0});
    CHECK(b.buffers()[s].size == 4);
}

TEST_CASE("ops record their arguments", "[batch]") {
    SyscallBatch b;
    auto path = b.input_string("/etc/hostname");
    auto buf = b.output(64);
    auto open =
        b.add(x86abi::kOpenat,
              {B::imm_signed(x86abi::kAtFdcwd), B::buf(path), B::imm(x86abi::kORdonly)}, true);
    auto read = b.add(x86abi::kRead, {B::result_of(open), B::buf(buf, 8), B::imm(56)});
    auto close = b.add(x86abi::kClose, {B::result_of(open)});
    b.filled_by(buf, read, B::Fill::kResultBytes);

    CHECK(open == 0);
    CHECK(read == 1);
    CHECK(close == 2);
    CHECK_FALSE(b.empty());
    REQUIRE(b.ops().size() == 3);

    const auto& o = b.ops()[open];
    CHECK(o.nr == 257);
    CHECK(o.stop_on_error);
    CHECK(o.args[0].kind == B::Arg::Kind::kImmediate);
    CHECK(o.args[0].value == static_cast<uint64_t>(-100));
    CHECK(o.args[1].kind == B::Arg::Kind::kBuffer);
    CHECK(o.args[1].value == path);
    CHECK(o.args[3].kind == B::Arg::Kind::kImmediate);  // unspecified arguments are 0
    CHECK(o.args[3].value == 0);
    CHECK(o.args[5].value == 0);

    const auto& r = b.ops()[read];
    CHECK_FALSE(r.stop_on_error);
    CHECK(r.args[0].kind == B::Arg::Kind::kResultOf);
    CHECK(r.args[0].value == open);
    CHECK(r.args[1].offset == 8);

    CHECK(b.buffers()[buf].filled_by == read);
    CHECK(b.buffers()[buf].fill == B::Fill::kResultBytes);
    CHECK(b.validate(SHADOW_MAX_OPS, SHADOW_DATA_SIZE).has_value());
}

TEST_CASE("validate", "[batch]") {
    auto expect_error = [](const SyscallBatch& b, int code, size_t max_ops = 8,
                           size_t capacity = 4096) {
        auto r = b.validate(max_ops, capacity);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code() == code);
    };

    SECTION("an empty batch") {
        SyscallBatch b;
        expect_error(b, EINVAL);
    }
    SECTION("too many ops") {
        SyscallBatch b;
        for (int i = 0; i < 3; ++i)
            b.add(x86abi::kGetpid, {});
        CHECK(b.validate(3, 0).has_value());
        expect_error(b, E2BIG, 2);
    }
    SECTION("too much data") {
        SyscallBatch b;
        b.output(100);  // occupies 112 bytes
        b.add(x86abi::kGetpid, {});
        CHECK(b.validate(8, 112).has_value());
        expect_error(b, E2BIG, 8, 111);
    }
    SECTION("a reference to a later op") {
        SyscallBatch b;
        b.add(x86abi::kClose, {B::result_of(1)});
        b.add(x86abi::kGetpid, {});
        expect_error(b, EINVAL);
    }
    SECTION("a reference to the op itself") {
        SyscallBatch b;
        b.add(x86abi::kGetpid, {});
        b.add(x86abi::kClose, {B::imm(0), B::result_of(1)});
        expect_error(b, EINVAL);
    }
    SECTION("a backward reference is fine") {
        SyscallBatch b;
        b.add(x86abi::kGetpid, {});
        b.add(x86abi::kKill, {B::result_of(0), B::imm(0)});
        CHECK(b.validate(8, 0).has_value());
    }
    SECTION("a missing buffer") {
        SyscallBatch b;
        b.output(8);
        b.add(x86abi::kRead, {B::imm(0), B::buf(1), B::imm(8)});
        expect_error(b, EINVAL);
    }
    SECTION("an offset past the end of its buffer") {
        SyscallBatch b;
        auto buf = b.output(8);
        b.add(x86abi::kRead, {B::imm(0), B::buf(buf, 9), B::imm(8)});
        expect_error(b, EINVAL);
    }
    SECTION("an offset at the end of its buffer") {
        SyscallBatch b;
        auto buf = b.output(8);
        b.add(x86abi::kRead, {B::imm(0), B::buf(buf, 8), B::imm(0)});
        CHECK(b.validate(8, 4096).has_value());
    }
    SECTION("an output filled by a missing op") {
        SyscallBatch b;
        auto buf = b.output(8);
        auto op = b.add(x86abi::kRead, {B::imm(0), B::buf(buf), B::imm(8)});
        b.filled_by(buf, op + 1, B::Fill::kWhole);
        expect_error(b, EINVAL);
    }
}

TEST_CASE("encode_batch writes the shadow's op records", "[batch]") {
    SyscallBatch b;
    auto path = b.input_string("/proc/version");  // 14 bytes at 0
    auto buf = b.output(4096);                    // at 16
    auto open = b.add(x86abi::kOpenat,
                      {B::imm_signed(x86abi::kAtFdcwd), B::buf(path),
                       B::imm(x86abi::kORdonly | x86abi::kOCloexec)},
                      true);
    auto read = b.add(x86abi::kRead, {B::result_of(open), B::buf(buf, 32), B::imm(4064)});
    auto mixed = b.add(99, {B::imm(1), B::result_of(read), B::imm(3), B::result_of(open),
                            B::buf(buf), B::imm(0xffffffffffffffffULL)});
    b.filled_by(buf, read, B::Fill::kResultBytes);

    auto enc = encode_batch(b, kDataArea);
    REQUIRE(enc.op_records.size() == BATCH_HEADER_SIZE + 3 * OP_SIZE);
    CHECK(test::get_u64(enc.op_records, BATCH_NOPS) == 3);
    CHECK(test::get_u64(enc.op_records, 8) == 0);  // rest of the header

    // openat(AT_FDCWD, path, O_RDONLY|O_CLOEXEC)
    CHECK(record_field(enc, open, OP_NR) == 257);
    CHECK(record_arg(enc, open, 0) == static_cast<uint64_t>(-100));
    CHECK(record_arg(enc, open, 1) == kDataArea + 0);
    CHECK(record_arg(enc, open, 2) == 02000000);
    CHECK(record_arg(enc, open, 3) == 0);
    CHECK(record_arg(enc, open, 5) == 0);
    CHECK(record_field(enc, open, OP_REFS) == 0);
    CHECK(record_field(enc, open, OP_FLAGS) == OPF_STOP_ON_ERROR);
    CHECK(record_field(enc, open, OP_RESULT) == kCanceled);

    // read(<fd of op 0>, data + 16 + 32, 4064)
    CHECK(record_field(enc, read, OP_NR) == 0);
    CHECK(record_arg(enc, read, 0) == open);  // the op index; the shadow substitutes it
    CHECK(record_arg(enc, read, 1) == kDataArea + 16 + 32);
    CHECK(record_arg(enc, read, 2) == 4064);
    CHECK(record_field(enc, read, OP_REFS) == 0b1);
    CHECK(record_field(enc, read, OP_FLAGS) == 0);
    CHECK(record_field(enc, read, OP_RESULT) == kCanceled);

    CHECK(record_field(enc, mixed, OP_NR) == 99);
    CHECK(record_arg(enc, mixed, 0) == 1);
    CHECK(record_arg(enc, mixed, 1) == read);
    CHECK(record_arg(enc, mixed, 2) == 3);
    CHECK(record_arg(enc, mixed, 3) == open);
    CHECK(record_arg(enc, mixed, 4) == kDataArea + 16);
    CHECK(record_arg(enc, mixed, 5) == 0xffffffffffffffffULL);
    CHECK(record_field(enc, mixed, OP_REFS) == 0b1010);
    CHECK(record_field(enc, mixed, OP_RESULT) == kCanceled);

    // Only the input goes to the guest; the output buffer is not written.
    REQUIRE(enc.inputs.size() == 1);
    CHECK(enc.inputs[0].offset == 0);
    CHECK(enc.inputs[0].bytes == test::bytes_of(std::string("/proc/version", 14)));
}

TEST_CASE("encode_batch merges adjacent inputs", "[batch]") {
    SECTION("two inputs in a row become one chunk with zero padding") {
        SyscallBatch b;
        const std::vector<uint8_t> abc = {'a', 'b', 'c'};
        b.input(abc);            // 0..3
        b.input_string("de");    // 16..19
        b.input_string("/tmp");  // 32..37
        b.add(x86abi::kGetpid, {});
        auto enc = encode_batch(b, kDataArea);
        REQUIRE(enc.inputs.size() == 1);
        CHECK(enc.inputs[0].offset == 0);
        std::vector<uint8_t> expected(37, 0);
        expected[0] = 'a';
        expected[1] = 'b';
        expected[2] = 'c';
        expected[16] = 'd';
        expected[17] = 'e';
        std::memcpy(expected.data() + 32, "/tmp", 4);
        CHECK(enc.inputs[0].bytes == expected);
    }
    SECTION("an output in between splits the chunks") {
        SyscallBatch b;
        b.input_string("x");   // 0
        b.output(1);           // 16
        b.input_string("yz");  // 32
        b.add(x86abi::kGetpid, {});
        auto enc = encode_batch(b, kDataArea);
        REQUIRE(enc.inputs.size() == 2);
        CHECK(enc.inputs[0].offset == 0);
        CHECK(enc.inputs[0].bytes == std::vector<uint8_t>{'x', 0});
        CHECK(enc.inputs[1].offset == 32);
        CHECK(enc.inputs[1].bytes == std::vector<uint8_t>{'y', 'z', 0});
    }
    SECTION("a full 16-byte input followed by another") {
        SyscallBatch b;
        std::vector<uint8_t> sixteen(16, 0x41);
        b.input(sixteen);     // 0..16
        b.input_string("q");  // 16
        b.add(x86abi::kGetpid, {});
        auto enc = encode_batch(b, kDataArea);
        REQUIRE(enc.inputs.size() == 1);
        REQUIRE(enc.inputs[0].bytes.size() == 18);
        CHECK(enc.inputs[0].bytes[15] == 0x41);
        CHECK(enc.inputs[0].bytes[16] == 'q');
        CHECK(enc.inputs[0].bytes[17] == 0);
    }
    SECTION("outputs only, or empty inputs: nothing to copy") {
        SyscallBatch b;
        b.output(64);
        b.input(std::span<const uint8_t>());
        b.add(x86abi::kGetpid, {});
        auto enc = encode_batch(b, kDataArea);
        CHECK(enc.inputs.empty());
    }
}

TEST_CASE("encode_batch of the largest batch fits the ops area", "[batch]") {
    SyscallBatch b;
    for (size_t i = 0; i < SHADOW_MAX_OPS; ++i)
        b.add(x86abi::kGetpid, {});
    CHECK(b.validate(SHADOW_MAX_OPS, SHADOW_DATA_SIZE).has_value());
    auto enc = encode_batch(b, kDataArea);
    CHECK(enc.op_records.size() <= SHADOW_OPS_SIZE);
    CHECK(test::get_u64(enc.op_records, BATCH_NOPS) == SHADOW_MAX_OPS);
    CHECK(record_field(enc, SHADOW_MAX_OPS - 1, OP_NR) == x86abi::kGetpid);
    CHECK(record_field(enc, SHADOW_MAX_OPS - 1, OP_RESULT) == kCanceled);

    b.add(x86abi::kGetpid, {});
    auto r = b.validate(SHADOW_MAX_OPS, SHADOW_DATA_SIZE);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code() == E2BIG);
}

TEST_CASE("decode_results reads OP_RESULT of each record", "[batch]") {
    auto rec = records_with_results({3, neg(ENOENT), 0, 0xfffffffffffff000ULL});
    CHECK(decode_results(rec, 4) ==
          std::vector<uint64_t>{3, neg(ENOENT), 0, 0xfffffffffffff000ULL});
    CHECK(decode_results(rec, 2) == std::vector<uint64_t>{3, neg(ENOENT)});
    CHECK(decode_results(rec, 0).empty());

    // Records missing from a short read come back as -EIO.
    auto short_rec = std::span(rec).first(BATCH_HEADER_SIZE + OP_SIZE + OP_RESULT + 7);
    CHECK(decode_results(short_rec, 3) == std::vector<uint64_t>{3, neg(EIO), neg(EIO)});
    CHECK(decode_results({}, 2) == std::vector<uint64_t>{neg(EIO), neg(EIO)});

    // Encoded but never executed: every op reads as cancelled.
    SyscallBatch b;
    b.add(x86abi::kGetpid, {});
    b.add(x86abi::kGetpid, {});
    auto enc = encode_batch(b, kDataArea);
    CHECK(decode_results(enc.op_records, 2) == std::vector<uint64_t>{kCanceled, kCanceled});
}

TEST_CASE("output_length clamps guest-reported lengths", "[batch]") {
    SyscallBatch b;
    auto whole = b.output(144);
    auto bytes = b.output(100);
    auto input = b.input_string("in");
    auto orphan = b.output(10);
    b.add(x86abi::kNewfstatat, {});
    b.add(x86abi::kRead, {});
    b.filled_by(whole, 0, B::Fill::kWhole);
    b.filled_by(bytes, 1, B::Fill::kResultBytes);
    b.filled_by(orphan, 5, B::Fill::kWhole);
    const auto& bufs = b.buffers();

    CHECK(output_length(bufs[whole], {0, 10}) == 144);
    CHECK(output_length(bufs[whole], {neg(ENOENT), 10}) == 0);
    CHECK(output_length(bufs[whole], {neg(4095), 10}) == 0);

    CHECK(output_length(bufs[bytes], {0, 10}) == 10);
    CHECK(output_length(bufs[bytes], {0, 0}) == 0);
    CHECK(output_length(bufs[bytes], {0, 100}) == 100);
    CHECK(output_length(bufs[bytes], {0, 101}) == 100);
    CHECK(output_length(bufs[bytes], {0, 0x7fffffffffffffffULL}) == 100);
    CHECK(output_length(bufs[bytes], {0, neg(EFAULT)}) == 0);
    CHECK(output_length(bufs[bytes], {0, kCanceled}) == 0);
    // -4096 is not an errno: a huge length, clamped.
    CHECK(output_length(bufs[bytes], {0, 0xfffffffffffff000ULL}) == 100);

    CHECK(output_length(bufs[input], {0, 10}) == 0);   // not an output
    CHECK(output_length(bufs[orphan], {0, 10}) == 0);  // its op has no result
    CHECK(output_length(bufs[bytes], {0}) == 0);       // results cut short
}

TEST_CASE("BatchOutcome interprets results", "[batch]") {
    BatchOutcome out;
    out.results = {3, neg(ENOENT), neg(4095), 0xfffffffffffff000ULL, kCanceled};
    out.buffers = {{}, {1, 2}};
    CHECK(out.result(0) == 3);
    CHECK_FALSE(out.failed(0));
    CHECK(out.error_of(0) == 0);
    CHECK(out.failed(1));
    CHECK(out.error_of(1) == ENOENT);
    CHECK(out.failed(2));
    CHECK(out.error_of(2) == 4095);
    CHECK_FALSE(out.failed(3));
    CHECK(out.result(3) == -4096);
    CHECK(out.failed(4));
    CHECK(out.error_of(4) == ECANCELED);
    CHECK(out.bytes(1) == std::vector<uint8_t>{1, 2});
    CHECK_THROWS_AS(out.result(5), std::out_of_range);
}

TEST_CASE("prepend puts ops first and renumbers references", "[batch]") {
    using cloudvmi::SyscallBatch;
    SyscallBatch b;
    auto path = b.input_string("/x");
    auto open = b.add(257, {SyscallBatch::imm(1), SyscallBatch::buf(path)}, true);
    auto out = b.output(64);
    auto rd =
        b.add(0, {SyscallBatch::result_of(open), SyscallBatch::buf(out), SyscallBatch::imm(64)});
    b.filled_by(out, rd, SyscallBatch::Fill::kResultBytes);
    SyscallBatch::Op close;
    close.nr = 3;
    close.args[0] = SyscallBatch::imm(7);
    b.prepend({close, close});
    REQUIRE(b.ops().size() == 4);
    CHECK(b.ops()[0].nr == 3);
    CHECK(b.ops()[1].nr == 3);
    CHECK(b.ops()[2].nr == 257);
    CHECK(b.ops()[3].args[0].kind == SyscallBatch::Arg::Kind::kResultOf);
    CHECK(b.ops()[3].args[0].value == 2);  // was op 0, now op 2
    CHECK(b.buffers()[out].filled_by == 3);
    CHECK(b.buffers()[path].offset == 0);  // buffers unchanged
    CHECK(b.validate(204, 1 << 20).has_value());
}
