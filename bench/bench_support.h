// What both benchmarks share: summary statistics and the guardian that keeps a guest safe
// if a benchmark is interrupted (without one, QEMU leaves the VM paused when we die).
#pragma once

#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/stats.h"

namespace cloudvmi::bench {

struct Stats {
    double median = 0, p99 = 0, min = 0;
    size_t n = 0;
};

inline Stats summarize(std::vector<double> v) {
    Stats s;
    if (v.empty()) return s;
    std::sort(v.begin(), v.end());
    s.n = v.size();
    s.min = v.front();
    s.median = nearest_rank(v, 0.50);
    s.p99 = nearest_rank(v, 0.99);
    return s;
}

// The cloudvmi binary built next to this benchmark, which serves as the guardian; "" if
// there is none.
inline std::string sibling_cloudvmi() {
    char self[4096] = {};
    ssize_t n = ::readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return "";
    std::string path(self, static_cast<size_t>(n));
    path = path.substr(0, path.rfind('/') + 1) + "cloudvmi";
    return ::access(path.c_str(), X_OK) == 0 ? path : "";
}

}  // namespace cloudvmi::bench
