#!/bin/sh
# Configures and builds CloudVMI into build/ (and, with --asan, the sanitizer build into
# build-asan/). Used by demo.sh and test.sh; safe to run again.
#   build.sh [--asan] [TARGET...]   TARGETs of build/ only (default: all of them), so
#                                   that a caller needing one program waits for no other
set -eu
cd "$(dirname "$0")/.."
asan=false
targets=
for arg in "$@"; do
    case $arg in
        --asan) asan=true ;;
        -*) echo "usage: scripts/build.sh [--asan] [TARGET...]" >&2; exit 2 ;;
        *) targets="$targets $arg" ;;
    esac
done
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# $targets unquoted: one word per target name.
cmake --build build -j"$jobs" ${targets:+--target $targets}
if [ "$asan" = true ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCLOUDVMI_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$jobs" --target unit_tests cloudvmi
fi
