// A list of syscalls executed back to back by the shadow, with the buffers they use.
//
// One batch costs one round trip to the guest however many syscalls it holds, so file
// operations are built as batches: open+read+close, or getdents64 followed by a statx
// per entry. Later ops can take an earlier op's result as an argument (the fd returned
// by openat), and an op can cancel the rest of the batch when it fails.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.h"

namespace cloudvmi {

class SyscallBatch {
  public:
    using BufferId = size_t;
    using OpId = size_t;

    struct Arg {
        enum class Kind { kImmediate, kBuffer, kResultOf };
        Kind kind = Kind::kImmediate;
        uint64_t value = 0;   // immediate, buffer id, or op id
        uint64_t offset = 0;  // byte offset into the buffer
    };
    static Arg imm(uint64_t v) { return {Arg::Kind::kImmediate, v, 0}; }
    static Arg imm_signed(int64_t v) {
        return {Arg::Kind::kImmediate, static_cast<uint64_t>(v), 0};
    }
    static Arg buf(BufferId b, uint64_t offset = 0) { return {Arg::Kind::kBuffer, b, offset}; }
    static Arg result_of(OpId op) { return {Arg::Kind::kResultOf, op, 0}; }

    enum class Fill {
        kWhole,        // read back the whole buffer if the filling op succeeded
        kResultBytes,  // read back as many bytes as the filling op returned
    };

    struct Buffer {
        size_t size = 0;
        std::vector<uint8_t> input;  // copied into the guest before the batch
        bool is_output = false;
        OpId filled_by = 0;
        Fill fill = Fill::kWhole;
        size_t offset = 0;  // position in the shadow's data area, assigned by add_*
    };

    struct Op {
        uint64_t nr = 0;
        Arg args[6];
        bool stop_on_error = false;
    };

    // Buffers are laid out one after another (16-byte aligned) in the data area.
    BufferId input(std::span<const uint8_t> bytes);
    BufferId input_string(std::string_view s);  // NUL-terminated copy
    BufferId output(size_t size);

    OpId add(uint64_t nr, std::initializer_list<Arg> args, bool stop_on_error = false);
    // Declares which op writes an output buffer and how much of it to read back.
    void filled_by(BufferId buffer, OpId op, Fill fill);

    // Puts buffer-less ops in front of the existing ones; references between existing ops
    // are renumbered. Their results come first in the outcome.
    void prepend(const std::vector<Op>& ops);

    const std::vector<Op>& ops() const { return ops_; }
    const std::vector<Buffer>& buffers() const { return buffers_; }
    size_t data_bytes() const { return data_end_; }
    bool empty() const { return ops_.empty(); }

    // Checks the batch fits the shadow's areas and its references point backwards.
    ErrorOr<void> validate(size_t max_ops, size_t data_capacity) const;

  private:
    BufferId add_buffer(Buffer b);
    std::vector<Op> ops_;
    std::vector<Buffer> buffers_;
    size_t data_end_ = 0;
};

// What came back: rax of every op (-4095..-1 = -errno, -ECANCELED when skipped) and the
// contents of the output buffers, already cut to the length the guest reported.
struct BatchOutcome {
    std::vector<uint64_t> results;
    std::vector<std::vector<uint8_t>> buffers;  // indexed by BufferId; empty for inputs
    uint64_t shadow = 0;  // which of the session's shadows ran it (fds are only valid there)

    int64_t result(SyscallBatch::OpId op) const { return static_cast<int64_t>(results.at(op)); }
    bool failed(SyscallBatch::OpId op) const {
        auto r = result(op);
        return r < 0 && r >= -4095;
    }
    int error_of(SyscallBatch::OpId op) const {
        return failed(op) ? static_cast<int>(-result(op)) : 0;
    }
    const std::vector<uint8_t>& bytes(SyscallBatch::BufferId b) const { return buffers.at(b); }
    // The buffer itself, moved out (the data path copies nothing it need not).
    std::vector<uint8_t> take(SyscallBatch::BufferId b) { return std::move(buffers.at(b)); }
};

// The shadow's binary encoding of a batch, for a region mapped at `region_base`.
struct EncodedBatch {
    std::vector<uint8_t> op_records;  // batch header + op records
    struct Chunk {
        uint64_t offset;  // from the start of the data area
        std::vector<uint8_t> bytes;
    };
    std::vector<Chunk> inputs;  // adjacent inputs merged
};
EncodedBatch encode_batch(const SyscallBatch& batch, uint64_t data_area_address);

// Extracts the results from the op records read back from the guest; checks nothing
// beyond what the layout guarantees (values are untrusted and checked by the caller).
std::vector<uint64_t> decode_results(std::span<const uint8_t> op_records, size_t op_count);

// How many bytes of an output buffer to read back, given the op results. Guest-reported
// lengths are clamped to the buffer size: the guest is not trusted.
size_t output_length(const SyscallBatch::Buffer& b, const std::vector<uint64_t>& results);

}  // namespace cloudvmi
