#include "apps/nagios_range.h"

#include "common/strings.h"

namespace cloudvmi::apps {
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
        auto end = parse_double(text);
        if (!end) return std::nullopt;
        r.end = *end;
    } else {
        auto start = text.substr(0, colon), end = text.substr(colon + 1);
        if (start == "~") {
            r.start_infinite = true;
        } else if (auto v = parse_double(start)) {
            r.start = *v;
        } else if (!start.empty()) {
            return std::nullopt;
        }
        if (end.empty()) {
            r.end_infinite = true;
        } else if (auto v = parse_double(end)) {
            r.end = *v;
        } else {
            return std::nullopt;
        }
    }
    if (!r.start_infinite && !r.end_infinite && r.start > r.end) return std::nullopt;
    return r;
}

}  // namespace cloudvmi::apps
