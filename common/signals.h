// Signal names and numbers as Linux has them (the same on x86-64 guests and hosts).
#pragma once

#include <optional>
#include <string_view>

namespace cloudvmi {

// "TERM", "SIGTERM", "term" or "15" -> 15; nullopt for anything else (numbers 1..64).
std::optional<int> parse_signal(std::string_view text);

}  // namespace cloudvmi
