// check_cloudvmi: a Nagios/Icinga plugin with thresholds on any number in a /vmi file.
// Exit status and output follow the Monitoring Plugins guidelines: 0 OK, 1 WARNING,
// 2 CRITICAL, 3 UNKNOWN (bad arguments, unreadable file, no number, timeout), one line of
// text with performance data after '|'.
#include <unistd.h>

#include <charconv>
#include <csignal>
#include <cstdio>

#include "apps/app_support.h"
#include "apps/apps.h"
#include "apps/nagios_range.h"
#include "apps/value_select.h"
#include "common/strings.h"

namespace cloudvmi::apps {
namespace {

enum NagiosState { kOk = 0, kWarning = 1, kCritical = 2, kUnknown = 3 };
const char* const kStateNames[] = {"OK", "WARNING", "CRITICAL", "UNKNOWN"};

int report(NagiosState state, const std::string& text) {
    std::printf("CLOUDVMI %s - %s\n", kStateNames[state], text.c_str());
    std::fflush(stdout);
    return state;
}

// A VM that cannot answer must not hang the monitoring system's worker.
void on_timeout(int) {
    const char line[] = "CLOUDVMI UNKNOWN - timed out reading the file\n";
    [[maybe_unused]] auto n = ::write(STDOUT_FILENO, line, sizeof line - 1);
    ::_exit(kUnknown);
}

// Perfdata labels are quoted when they hold spaces or '=' (guidelines).
std::string perf_label(const std::string& label) {
    std::string quoted;
    for (char c : label)
        quoted += c == '\'' ? std::string("''") : std::string(1, c);
    return label.find_first_of(" ='") != std::string::npos ? "'" + quoted + "'" : label;
}

}  // namespace

int check_main(int argc, char** argv) {
    std::string file, label = "value", warning, critical, unit;
    ValueSelector selector;
    unsigned timeout = 10;
    CLI::App app{
        "Nagios/Icinga plugin: compares a number read from a /vmi file with warning and "
        "critical ranges (Monitoring Plugins syntax: 10, 10:, ~:10, 10:20, @10:20). "
        "Exit status 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.",
        "check_cloudvmi"};
    app.add_option("-f,--file", file, "the file, e.g. /vmi/NODE/VM/proc/loadavg")->required();
    app.add_option("--line", selector.line, "1-based line of the file")->check(CLI::PositiveNumber);
    app.add_option("-F,--field", selector.field, "1-based whitespace-separated field of the line")
        ->check(CLI::PositiveNumber);
    app.add_option("-k,--key", selector.key, "the number after KEY or KEY: on its line");
    app.add_option("-j,--json-key", selector.json_key, "a top-level numeric member of a JSON file");
    app.add_option("-l,--label", label, "name of the value in the output and perfdata")
        ->capture_default_str();
    app.add_option("-u,--unit", unit, "unit of the perfdata (s, %, B, c...)");
    app.add_option("-w,--warning", warning, "warning range");
    app.add_option("-c,--critical", critical, "critical range");
    app.add_option("-t,--timeout", timeout, "seconds before UNKNOWN")->capture_default_str();
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        if (app.exit(e) == 0) return kOk;                            // --help
        return report(kUnknown, "usage: " + std::string(e.what()));  // guidelines: UNKNOWN
    }
    auto warn = warning.empty() ? std::nullopt : parse_nagios_range(warning);
    auto crit = critical.empty() ? std::nullopt : parse_nagios_range(critical);
    if ((!warning.empty() && !warn) || (!critical.empty() && !crit)) {
        return report(kUnknown,
                      "bad range '" + (warn || warning.empty() ? critical : warning) + "'");
    }
    std::signal(SIGALRM, on_timeout);
    ::alarm(timeout);
    auto text = read_file(file, 4 << 20);
    if (!text) return report(kUnknown, text.error().describe());
    auto value = select_value(*text, selector);
    ::alarm(0);
    if (!value) return report(kUnknown, file + ": " + value.error().message());
    NagiosState state = crit && crit->alerts(*value)   ? kCritical
                        : warn && warn->alerts(*value) ? kWarning
                                                       : kOk;
    // Shortest exact form: no exponent or rounding for what perfdata parsers read.
    char digits[64];
    auto end = std::to_chars(digits, digits + sizeof digits, *value, std::chars_format::fixed).ptr;
    std::string shown(digits, end);
    return report(state, label + " = " + shown + unit + " | " + perf_label(label) + "=" + shown +
                             unit + ";" + warning + ";" + critical);
}

}  // namespace cloudvmi::apps
