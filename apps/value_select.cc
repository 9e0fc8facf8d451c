#include "apps/value_select.h"

#include <nlohmann/json.hpp>

#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

ErrorOr<double> as_number(std::string_view s, const std::string& what) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) {
        s.remove_suffix(1);
    }
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    auto v = parse_double(s);
    if (!v) return make_error(EINVAL, what + " is not a number: '" + printable(s, 40) + "'");
    return *v;
}

}  // namespace

ErrorOr<double> select_value(std::string_view text, const ValueSelector& s) {
    if (!s.json_key.empty()) {
        auto j = nlohmann::json::parse(text, nullptr, false);
        if (!j.is_object()) return make_error(EINVAL, "not a JSON object");
        auto it = j.find(s.json_key);
        if (it == j.end() || !it->is_number()) {
            return make_error(EINVAL, "no numeric member \"" + printable(s.json_key, 40) + "\"");
        }
        return it->get<double>();
    }
    auto lines = split(text, '\n');
    if (!s.key.empty()) {
        for (auto line : lines) {
            auto f = split_fields(line);
            if (f.size() >= 2 && (f[0] == s.key || f[0] == s.key + ":")) {
                return as_number(f[1], "the value of " + s.key);
            }
        }
        return make_error(EINVAL, "no line starts with " + printable(s.key, 40));
    }
    if (s.field == 0 && s.line == 0) return as_number(text, "the file");
    size_t index = s.line > 0 ? static_cast<size_t>(s.line - 1) : 0;
    if (index >= lines.size()) return make_error(EINVAL, strformat("no line %d", s.line));
    if (s.field == 0) return as_number(lines[index], strformat("line %d", s.line));
    auto f = split_fields(lines[index]);
    if (static_cast<size_t>(s.field) > f.size()) {
        return make_error(EINVAL, strformat("no field %d on line %zu", s.field, index + 1));
    }
    return as_number(f[static_cast<size_t>(s.field - 1)], strformat("field %d", s.field));
}

}  // namespace cloudvmi::apps
