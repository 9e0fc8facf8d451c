#include "common/random.h"

#include <random>

namespace cloudvmi {

uint64_t random_u64() {
    std::random_device rd;
    return (uint64_t{rd()} << 32) ^ rd();
}

}  // namespace cloudvmi
