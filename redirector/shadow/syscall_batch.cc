#include "redirector/shadow/syscall_batch.h"

#include <cstring>

#include "common/strings.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/x86/guest_abi.h"

namespace cloudvmi {

namespace {
constexpr size_t kAlign = 16;
size_t align_up(size_t v) {
    return (v + kAlign - 1) & ~(kAlign - 1);
}
}  // namespace

SyscallBatch::BufferId SyscallBatch::add_buffer(Buffer b) {
    b.offset = data_end_;
    data_end_ = align_up(data_end_ + b.size);
    buffers_.push_back(std::move(b));
    return buffers_.size() - 1;
}

SyscallBatch::BufferId SyscallBatch::input(std::span<const uint8_t> bytes) {
    Buffer b;
    b.size = bytes.size();
    b.input.assign(bytes.begin(), bytes.end());
    return add_buffer(std::move(b));
}

SyscallBatch::BufferId SyscallBatch::input_string(std::string_view s) {
    Buffer b;
    b.size = s.size() + 1;
    b.input.assign(s.begin(), s.end());
    b.input.push_back(0);
    return add_buffer(std::move(b));
}

SyscallBatch::BufferId SyscallBatch::output(size_t size) {
    Buffer b;
    b.size = size;
    b.is_output = true;
    return add_buffer(std::move(b));
}

SyscallBatch::OpId SyscallBatch::add(uint64_t nr, std::initializer_list<Arg> args,
                                     bool stop_on_error) {
    Op op;
    op.nr = nr;
    size_t i = 0;
    for (const auto& a : args) {
        if (i < 6) op.args[i] = a;
        ++i;
    }
    op.stop_on_error = stop_on_error;
    ops_.push_back(op);
    return ops_.size() - 1;
}

void SyscallBatch::filled_by(BufferId buffer, OpId op, Fill fill) {
    auto& b = buffers_.at(buffer);
    b.filled_by = op;
    b.fill = fill;
}

void SyscallBatch::prepend(const std::vector<Op>& front) {
    size_t k = front.size();
    for (auto& op : ops_) {
        for (auto& a : op.args) {
            if (a.kind == Arg::Kind::kResultOf) a.value += k;
        }
    }
    for (auto& b : buffers_) {
        if (b.is_output) b.filled_by += k;
    }
    ops_.insert(ops_.begin(), front.begin(), front.end());
}

ErrorOr<void> SyscallBatch::validate(size_t max_ops, size_t data_capacity) const {
    if (ops_.empty()) return make_error(EINVAL, "internal: empty syscall batch");
    if (ops_.size() > max_ops) {
        return make_error(E2BIG, strformat("internal: batch of %zu syscalls (at most %zu)",
                                           ops_.size(), max_ops));
    }
    if (data_end_ > data_capacity) {
        return make_error(E2BIG, strformat("batch needs %zu bytes of guest buffers (at most %zu)",
                                           data_end_, data_capacity));
    }
    for (size_t i = 0; i < ops_.size(); ++i) {
        for (const auto& a : ops_[i].args) {
            if (a.kind == Arg::Kind::kResultOf && a.value >= i) {
                return make_error(EINVAL, "internal: batch op refers to a later op");
            }
            if (a.kind == Arg::Kind::kBuffer &&
                (a.value >= buffers_.size() || a.offset > buffers_[a.value].size)) {
                return make_error(EINVAL, "internal: batch op refers to a missing buffer");
            }
        }
    }
    for (const auto& b : buffers_) {
        if (b.is_output && b.filled_by >= ops_.size()) {
            return make_error(EINVAL, "internal: output buffer filled by a missing op");
        }
    }
    return {};
}

EncodedBatch encode_batch(const SyscallBatch& batch, uint64_t data_area_address) {
    EncodedBatch enc;
    const auto& ops = batch.ops();
    enc.op_records.assign(BATCH_HEADER_SIZE + ops.size() * OP_SIZE, 0);
    uint64_t count = ops.size();
    std::memcpy(enc.op_records.data() + BATCH_NOPS, &count, 8);
    for (size_t i = 0; i < ops.size(); ++i) {
        uint8_t* rec = enc.op_records.data() + BATCH_HEADER_SIZE + i * OP_SIZE;
        uint64_t refs = 0;
        uint64_t flags = ops[i].stop_on_error ? OPF_STOP_ON_ERROR : 0;
        std::memcpy(rec + OP_NR, &ops[i].nr, 8);
        for (int a = 0; a < 6; ++a) {
            const auto& arg = ops[i].args[a];
            uint64_t v = arg.value;
            if (arg.kind == SyscallBatch::Arg::Kind::kBuffer) {
                v = data_area_address + batch.buffers()[arg.value].offset + arg.offset;
            } else if (arg.kind == SyscallBatch::Arg::Kind::kResultOf) {
                refs |= uint64_t{1} << a;
            }
            std::memcpy(rec + OP_ARGS + a * 8, &v, 8);
        }
        std::memcpy(rec + OP_REFS, &refs, 8);
        std::memcpy(rec + OP_FLAGS, &flags, 8);
        uint64_t unset = static_cast<uint64_t>(-static_cast<int64_t>(ECANCELED));
        std::memcpy(rec + OP_RESULT, &unset, 8);
    }
    for (const auto& b : batch.buffers()) {
        if (b.input.empty()) continue;
        if (!enc.inputs.empty()) {
            auto& last = enc.inputs.back();
            if (last.offset + last.bytes.size() <= b.offset &&
                b.offset - (last.offset + last.bytes.size()) < 16) {
                last.bytes.resize(b.offset - last.offset, 0);
                last.bytes.insert(last.bytes.end(), b.input.begin(), b.input.end());
                continue;
            }
        }
        enc.inputs.push_back({b.offset, b.input});
    }
    return enc;
}

std::vector<uint64_t> decode_results(std::span<const uint8_t> op_records, size_t op_count) {
    std::vector<uint64_t> results(op_count, static_cast<uint64_t>(-static_cast<int64_t>(EIO)));
    for (size_t i = 0; i < op_count; ++i) {
        size_t at = BATCH_HEADER_SIZE + i * OP_SIZE + OP_RESULT;
        if (at + 8 > op_records.size()) break;
        std::memcpy(&results[i], op_records.data() + at, 8);
    }
    return results;
}

size_t output_length(const SyscallBatch::Buffer& b, const std::vector<uint64_t>& results) {
    if (!b.is_output || b.filled_by >= results.size()) return 0;
    uint64_t r = results[b.filled_by];
    if (x86abi::is_error_result(r)) return 0;
    if (b.fill == SyscallBatch::Fill::kWhole) return b.size;
    return static_cast<size_t>(std::min<uint64_t>(r, b.size));
}

}  // namespace cloudvmi
