// Nearest-rank percentiles, shared by the mount's stats file and the benchmarks so that a
// p99 means the same thing in both.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

namespace cloudvmi {

// The value of rank ceil(p * n), clamped to [1, n], in `sorted` (ascending, not empty).
// Nearest rank always reports a value that was observed, never an interpolation.
inline double nearest_rank(const std::vector<double>& sorted, double p) {
    auto rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
    return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

}  // namespace cloudvmi
