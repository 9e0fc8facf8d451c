#!/bin/sh
# One line per failed assertion of the last ctest run (at most 3 per test, 12 in all):
# CI keeps only the tail of a run's output, and the full output of a failed guest test is
# hundreds of lines further up.
# Usage: scripts/ci-failure-summary.sh [BUILD_DIR]
set -eu
log="${1:-build}/Testing/Temporary/LastTest.log"
[ -r "$log" ] || { echo "ci-failure-summary: no $log" >&2; exit 0; }
awk '
    function trim(s) { sub(/^[ \t]+/, "", s); sub(/[ \t\r]+$/, "", s); return s }
    function flush() {
        if (where == "") return
        if (total < 12 && count[test] < 3) {
            printf "%s: %s %s%s\n", test, where, what, (value == "" ? "" : " -> " value)
            ++count[test]; ++total
        } else {
            ++skipped
        }
        where = ""; what = ""; value = ""
    }
    /^[0-9]+\/[0-9]+ Test: / { flush(); test = $3; next }
    / FAILED:$/ {
        flush()
        where = $1; sub(/^.*\//, "", where); sub(/:$/, "", where)
        state = "what"; next
    }
    where != "" && state == "what" && trim($0) != "" { what = trim($0); state = "after"; next }
    where != "" && state == "after" && /^with expansion:/ { state = "value"; next }
    where != "" && state == "after" && /due to unexpected exception/ { state = "value"; next }
    where != "" && state == "value" && trim($0) != "" { value = trim($0); flush(); next }
    where != "" && state == "after" && /^(---|===)/ { flush() }
    END {
        flush()
        if (skipped > 0) printf "(%d more failed assertions in %s)\n", skipped, FILENAME
    }
' "$log"
