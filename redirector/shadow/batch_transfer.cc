#include "redirector/shadow/batch_transfer.h"

#include "redirector/shadow/shadow_layout.h"

namespace cloudvmi {

ErrorOr<EncodedBatch> post_batch(const SyscallBatch& batch, uint64_t region,
                                 const RegionWriter& write) {
    uint64_t data_area = region + SHADOW_DATA_OFFSET;
    EncodedBatch enc = encode_batch(batch, data_area);
    TRY(write(region + SHADOW_OPS_OFFSET, enc.op_records));
    for (const auto& chunk : enc.inputs) {
        TRY(write(data_area + chunk.offset, chunk.bytes));
    }
    return enc;
}

ErrorOr<BatchOutcome> collect_outcome(const SyscallBatch& batch, const EncodedBatch& enc,
                                      uint64_t region, const RegionReader& read) {
    uint64_t data_area = region + SHADOW_DATA_OFFSET;
    BatchOutcome out;
    std::vector<uint8_t> records(enc.op_records.size());
    TRY(read(region + SHADOW_OPS_OFFSET, records));
    out.results = decode_results(records, batch.ops().size());
    out.buffers.resize(batch.buffers().size());
    const auto& bufs = batch.buffers();
    size_t i = 0;
    while (i < bufs.size()) {
        size_t len = output_length(bufs[i], out.results);
        if (len == 0) {
            ++i;
            continue;
        }
        size_t begin = bufs[i].offset;
        size_t end = begin + len;
        size_t j = i + 1;
        while (j < bufs.size()) {
            size_t l = output_length(bufs[j], out.results);
            if (l == 0) {
                ++j;
                continue;
            }
            if (bufs[j].offset > end + 256) break;
            end = bufs[j].offset + l;
            ++j;
        }
        if (j == i + 1) {
            // One buffer alone: read straight into it.
            out.buffers[i].resize(end - begin);
            TRY(read(data_area + begin, out.buffers[i]));
            i = j;
            continue;
        }
        std::vector<uint8_t> span(end - begin);
        TRY(read(data_area + begin, span));
        for (size_t k = i; k < j; ++k) {
            size_t l = output_length(bufs[k], out.results);
            if (l == 0) continue;
            auto from = span.begin() + static_cast<ptrdiff_t>(bufs[k].offset - begin);
            out.buffers[k].assign(from, from + static_cast<ptrdiff_t>(l));
        }
        i = j;
    }
    return out;
}

}  // namespace cloudvmi
