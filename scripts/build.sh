#!/bin/sh
# Configures and builds CloudVMI into build/ (and, with --asan, the sanitizer build into
# build-asan/). Used by demo.sh and test.sh; safe to run again.
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
if [ "${1:-}" = "--asan" ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCLOUDVMI_SANITIZE=ON >/dev/null
    cmake --build build-asan -j"$jobs" --target unit_tests cloudvmi
fi
