// Threshold ranges as the Monitoring Plugins guidelines define them: "10" (alert outside
// 0..10), "10:" (below 10), "~:10" (above 10), "10:20" (outside), "@10:20" (inside).
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace cloudvmi::apps {

struct NagiosRange {
    double start = 0;
    double end = 0;
    bool start_infinite = false;  // "~"
    bool end_infinite = false;    // "10:"
    bool alert_inside = false;    // "@"
    std::string text;             // as given, for perfdata

    bool alerts(double value) const;
};

// nullopt for anything else (empty, start above end, NaN, trailing bytes).
std::optional<NagiosRange> parse_nagios_range(std::string_view text);

}  // namespace cloudvmi::apps
