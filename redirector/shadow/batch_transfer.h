// Moving a batch into a shadow's region and its outcome back out, through any accessor:
// the stub (trap engine, bootstrap) or guest RAM read from the host (mailbox engine).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "common/error.h"
#include "redirector/shadow/syscall_batch.h"

namespace cloudvmi {

using RegionWriter = std::function<ErrorOr<void>(uint64_t va, std::span<const uint8_t> data)>;
using RegionReader = std::function<ErrorOr<void>(uint64_t va, std::span<uint8_t> out)>;

// Writes a batch into the op and data areas of the region at `region`.
ErrorOr<EncodedBatch> post_batch(const SyscallBatch& batch, uint64_t region,
                                 const RegionWriter& write);

// Reads the results and output buffers of a batch that ran, merging neighbouring buffers
// into one transfer.
ErrorOr<BatchOutcome> collect_outcome(const SyscallBatch& batch, const EncodedBatch& enc,
                                      uint64_t region, const RegionReader& read);

}  // namespace cloudvmi
