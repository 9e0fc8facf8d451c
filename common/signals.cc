#include "common/signals.h"

#include <cctype>
#include <string>

namespace cloudvmi {

namespace {

struct SignalName {
    const char* name;
    int number;
};
constexpr SignalName kSignals[] = {
    {"HUP", 1},     {"INT", 2},   {"QUIT", 3},   {"ILL", 4},   {"TRAP", 5},  {"ABRT", 6},
    {"BUS", 7},     {"FPE", 8},   {"KILL", 9},   {"USR1", 10}, {"SEGV", 11}, {"USR2", 12},
    {"PIPE", 13},   {"ALRM", 14}, {"TERM", 15},  {"CHLD", 17}, {"CONT", 18}, {"STOP", 19},
    {"TSTP", 20},   {"TTIN", 21}, {"TTOU", 22},  {"URG", 23},  {"XCPU", 24}, {"XFSZ", 25},
    {"VTALRM", 26}, {"PROF", 27}, {"WINCH", 28}, {"IO", 29},   {"PWR", 30},  {"SYS", 31},
};

}  // namespace

std::optional<int> parse_signal(std::string_view text) {
    if (text.empty() || text.size() > 16) return std::nullopt;
    if (std::isdigit(static_cast<unsigned char>(text[0]))) {
        int n = 0;
        for (char c : text) {
            if (!std::isdigit(static_cast<unsigned char>(c))) return std::nullopt;
            n = n * 10 + (c - '0');
            if (n > 64) return std::nullopt;
        }
        if (n < 1) return std::nullopt;
        return n;
    }
    std::string upper;
    for (char c : text)
        upper += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    std::string_view name = upper;
    if (name.starts_with("SIG")) name.remove_prefix(3);
    for (const auto& s : kSignals) {
        if (name == s.name) return s.number;
    }
    return std::nullopt;
}

}  // namespace cloudvmi
