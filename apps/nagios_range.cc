#include "apps/nagios_range.h"

#include <charconv>
#include <cmath>

namespace cloudvmi::apps {
namespace {

std::optional<double> number(std::string_view s) {
    double v = 0;
    if (s.empty()) return std::nullopt;
    auto r = std::from_chars(s.data(), s.data() + s.size(), v);
    if (r.ec != std::errc() || r.ptr != s.data() + s.size() || !std::isfinite(v)) {
        return std::nullopt;
    }
    return v;
}

}  // namespace

bool NagiosRange::alerts(double value) const {
    bool inside = (start_infinite || value >= start) && (end_infinite || value <= end);
    return alert_inside ? inside : !inside;
}

std::optional<NagiosRange> parse_nagios_range(std::string_view text) {
    NagiosRange r;
    r.text = std::string(text);
    if (text.starts_with('@')) {
        r.alert_inside = true;
        text.remove_prefix(1);
    }
    auto colon = text.find(':');
    if (colon == std::string_view::npos) {
        auto end = number(text);
        if (!end) return std::nullopt;
        r.end = *end;
    } else {
        auto start = text.substr(0, colon), end = text.substr(colon + 1);
        if (start == "~") {
            r.start_infinite = true;
        } else if (auto v = number(start)) {
            r.start = *v;
        } else if (!start.empty()) {
            return std::nullopt;
        }
        if (end.empty()) {
            r.end_infinite = true;
        } else if (auto v = number(end)) {
            r.end = *v;
        } else {
            return std::nullopt;
        }
    }
    if (!r.start_infinite && !r.end_infinite && r.start > r.end) return std::nullopt;
    return r;
}

}  // namespace cloudvmi::apps
