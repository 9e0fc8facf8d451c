// Unpredictable numbers, for ids and cookies the guest must not guess.
#pragma once

#include <cstdint>

namespace cloudvmi {

// 64 bits from the system's random device.
uint64_t random_u64();

}  // namespace cloudvmi
