#!/bin/sh
# The whole test suite on a fresh Debian 12 machine: installs what is needed, builds (also
# with AddressSanitizer + UndefinedBehaviorSanitizer), fetches the test guest kernels, then
# runs the sanitized unit tests, a short run of every fuzz target (clang 16, build-fuzz/) and
# every ctest entry (unit tests and real-guest tests).
# Run as root: QEMU guests, /run/cloudvmi and (later) FUSE mounts need it.
set -eu
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh --asan

echo "== guest kernels and initramfs (cached in ${CLOUDVMI_CACHE:-$HOME/.cache/cloudvmi})"
for flavour in generic cloud rt; do
    tests/guest/build-guest.sh --flavour "$flavour" --quiet
done
# the other Debian releases' kernels (private apt lists in the cache, see tests/guest/README.md)
for release in bullseye trixie sid; do
    tests/guest/build-guest.sh --release "$release" --quiet
done
echo "== Debian 12 and 13 systemd guest images (debootstrap; ~10 min each the first time, cached after)"
tests/guest/build-debian-guest.sh --quiet
tests/guest/build-debian-guest.sh --release trixie --quiet

echo "== unit tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build-asan/tests/unit_tests

echo "== fuzz smoke run: every libFuzzer target for 15 s (scripts/fuzz.sh)"
# A finding fails the suite, but only after the guest tests have run too.
fuzz_status=0
scripts/fuzz.sh --seconds 15 || fuzz_status=$?

echo "== all tests (unit + real guests)"
ctest_status=0
ctest --test-dir build --output-on-failure --timeout 1200 "$@" || ctest_status=$?
if [ "$ctest_status" -ne 0 ]; then
    echo "== what failed (the full output is above)"
    scripts/ci-failure-summary.sh build
    [ "$fuzz_status" -eq 0 ] || echo "test.sh: the fuzz smoke run failed too (see above)" >&2
    exit "$ctest_status"
fi
if [ "$fuzz_status" -ne 0 ]; then
    echo "test.sh: the fuzz smoke run failed (see its output above)" >&2
    exit "$fuzz_status"
fi
