// Fuzzes how the results of a syscall batch are read back from the shadow's op records
// (redirector/shadow/syscall_batch.h decode_results, output_length, BatchOutcome) and what the
// file operations then parse out of the buffers the guest filled: the host trusts none of
// the results nor the lengths the guest reports.
//
// Input: one byte choosing a batch like those redirector/session/guest_file_ops.cc builds, then the
// op records as read from the guest, then the guest's data area.
#include <vector>

#include "fuzz/fuzz_check.h"
#include "redirector/session/guest_file_ops.h"
#include "redirector/shadow/shadow_layout.h"
#include "redirector/shadow/syscall_batch.h"
#include "redirector/x86/guest_abi.h"

using namespace cloudvmi;
using namespace cloudvmi::x86abi;
using B = SyscallBatch;

FUZZ_QUIET_LOGS()

namespace {

// open + getdents64, or open + two preads, or a few newfstatat, or uname.
SyscallBatch make_batch(uint8_t shape) {
    SyscallBatch b;
    switch (shape % 4) {
        case 0: {
            auto p = b.input_string("/proc");
            auto open = b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p), B::imm(0)}, true);
            auto buf = b.output(4096);
            auto op = b.add(kGetdents64, {B::result_of(open), B::buf(buf), B::imm(4096)});
            b.filled_by(buf, op, B::Fill::kResultBytes);
            break;
        }
        case 1: {
            auto p = b.input_string("/proc/loadavg");
            auto open = b.add(kOpenat, {B::imm_signed(kAtFdcwd), B::buf(p), B::imm(0)}, true);
            auto first = b.output(512);
            auto r1 = b.add(kPread64, {B::result_of(open), B::buf(first), B::imm(512), B::imm(0)});
            b.filled_by(first, r1, B::Fill::kResultBytes);
            auto second = b.output(512);
            auto r2 = b.add(kPread64,
                            {B::result_of(open), B::buf(second), B::imm(512), B::result_of(r1)});
            b.filled_by(second, r2, B::Fill::kResultBytes);
            break;
        }
        case 2:
            for (int i = 0; i < 3; ++i) {
                auto p = b.input_string("/etc/x");
                auto st = b.output(sizeof(Stat));
                auto op = b.add(kNewfstatat, {B::imm_signed(kAtFdcwd), B::buf(p), B::buf(st),
                                              B::imm(kAtSymlinkNofollow)});
                b.filled_by(st, op, B::Fill::kWhole);
            }
            break;
        default: {
            auto buf = b.output(kUtsnameSize);
            auto op = b.add(kUname, {B::buf(buf)});
            b.filled_by(buf, op, B::Fill::kWhole);
        }
    }
    return b;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) return 0;
    SyscallBatch batch = make_batch(data[0]);
    FUZZ_CHECK(batch.validate(SHADOW_MAX_OPS, SHADOW_DATA_SIZE).has_value());
    size_t records_size = BATCH_HEADER_SIZE + batch.ops().size() * OP_SIZE;
    auto rest = fuzz::as_bytes(data + 1, size - 1);
    auto records = rest.first(std::min(rest.size(), records_size));
    auto area = rest.subspan(records.size());

    BatchOutcome out;
    out.results = decode_results(records, batch.ops().size());
    FUZZ_CHECK(out.results.size() == batch.ops().size());
    out.buffers.resize(batch.buffers().size());
    for (size_t i = 0; i < batch.buffers().size(); ++i) {
        const auto& buf = batch.buffers()[i];
        size_t len = output_length(buf, out.results);
        FUZZ_CHECK(len <= buf.size);
        FUZZ_CHECK(buf.is_output || len == 0);
        // The data area as the guest left it (zeros past what the input holds).
        for (size_t k = 0; k < len; ++k) {
            size_t at = buf.offset + k;
            out.buffers[i].push_back(at < area.size() ? area[at] : 0);
        }
    }
    for (size_t op = 0; op < batch.ops().size(); ++op) {
        if (out.failed(op))
            FUZZ_CHECK(out.error_of(op) >= 1 && out.error_of(op) <= 4095);
        else
            FUZZ_CHECK(out.error_of(op) == 0);
    }

    // What the file operations parse out of them.
    for (size_t i = 0; i < batch.buffers().size(); ++i) {
        const auto& bytes = out.bytes(i);
        switch (data[0] % 4) {
            case 0:
                for (const auto& e : parse_dirents(bytes))
                    FUZZ_CHECK(is_safe_name(e.name));
                break;
            case 2:
                if (batch.buffers()[i].is_output) (void)parse_stat(bytes);
                break;
            case 3:
                (void)parse_utsname(bytes);
                break;
            default:
                break;
        }
    }
    return 0;
}
