// One number out of a /vmi file, for check_cloudvmi: the whole file ("60\n"), a field of a
// line (proc/loadavg's first), the number after a key (meminfo's "MemAvailable:"), or a
// top-level JSON field (.cloudvmi/stats.json's "requests").
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "common/error.h"

namespace cloudvmi::apps {

struct ValueSelector {
    int line = 0;          // 1-based; 0: the first line (for --field) or the whole file
    int field = 0;         // 1-based whitespace-separated field of the line
    std::string key;       // a line "KEY: NUMBER ..." or "KEY NUMBER ..."
    std::string json_key;  // a top-level numeric member of a JSON object
};

// EINVAL naming what was missing or not a number.
ErrorOr<double> select_value(std::string_view text, const ValueSelector& selector);

}  // namespace cloudvmi::apps
