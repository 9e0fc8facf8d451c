#!/bin/sh
# Builds the libFuzzer targets (fuzz/*_fuzz.cc) with clang 16 into build-fuzz/ and runs
# each one for a bounded time over a copy of its seed corpus (fuzz/corpus/TARGET/: the
# repository is not modified). Exits non-zero when any target finds a crash, a sanitizer
# report, a leak, a timeout or runs out of memory; the input that did it is kept under
# build-fuzz/artifacts/TARGET/ and its path printed.
#   fuzz.sh [--seconds N] [TARGET...]   N seconds per target (default 20); all targets
#                                       when none is named
set -eu
cd "$(dirname "$0")/.."

usage() {
    echo "usage: scripts/fuzz.sh [--seconds N] [TARGET...]" >&2
    echo "targets: $all" >&2
    exit 2
}

all=$(for f in fuzz/*_fuzz.cc; do printf '%s ' "$(basename "$f" .cc)"; done)
seconds=20
targets=
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) [ $# -ge 2 ] || usage; seconds=$2; shift 2 ;;
        --seconds=*) seconds=${1#--seconds=}; shift ;;
        -h|--help) usage ;;
        -*) usage ;;
        *)
            case " $all " in
                *" $1 "*) targets="$targets $1" ;;
                *) echo "fuzz.sh: no fuzz target '$1'" >&2; usage ;;
            esac
            shift ;;
    esac
done
case $seconds in ''|*[!0-9]*) usage ;; esac
[ "$seconds" -gt 0 ] || usage  # libFuzzer takes 0 as "no limit"
[ -n "$targets" ] || targets=$all

# clang 16, not Debian's default clang 14: see CLOUDVMI_FUZZ in CMakeLists.txt.
for tool in clang-16 clang++-16; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "fuzz.sh: $tool not found (apt-get install clang-16 libclang-rt-16-dev)" >&2
        exit 1
    }
done
echo "== building fuzz targets (build-fuzz/, clang 16, ASan + UBSan + libFuzzer)"
CC=clang-16 CXX=clang++-16 cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug \
    -DCLOUDVMI_FUZZ=ON -DCLOUDVMI_BUILD_TESTS=OFF >/dev/null
# Two jobs at most: the machines this runs on are shared. $targets unquoted: one per word.
# shellcheck disable=SC2086
cmake --build build-fuzz -j2 --target $targets

failed=
for t in $targets; do
    work=build-fuzz/run/$t
    artifacts=build-fuzz/artifacts/$t
    rm -rf "$work" "$artifacts"
    mkdir -p "$work" "$artifacts"
    cp -R "fuzz/corpus/$t" "$work/corpus"
    status=0
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "build-fuzz/fuzz/$t" -max_total_time="$seconds" -timeout=5 -rss_limit_mb=1024 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "$work/corpus" \
        >"$work/log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -n 1)
    units=$(find "$work/corpus" -type f | wc -l)
    if [ "$status" -eq 0 ]; then
        printf '%-26s ok      %10s executions in %ss, corpus %s inputs\n' \
            "$t" "${execs:-?}" "$seconds" "$units"
    else
        printf '%-26s FAILED  (exit %s) after %s executions; log %s\n' \
            "$t" "$status" "${execs:-?}" "$work/log"
        grep -E 'ERROR: |FUZZ_CHECK|runtime error|SUMMARY|Test unit written to|^artifact_prefix' \
            "$work/log" | head -n 20 | sed 's/^/    /'
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz.sh: failed:$failed (reproduce: build-fuzz/fuzz/TARGET ARTIFACT)" >&2
    exit 1
fi
