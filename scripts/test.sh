#!/bin/sh
# The whole test suite on a fresh Debian 12 machine: installs what is needed, builds (also
# with AddressSanitizer + UndefinedBehaviorSanitizer), fetches the test guest kernels, then
# runs the sanitized unit tests and every ctest entry (unit tests and real-guest tests).
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
echo "== Debian 12 systemd guest image (debootstrap; ~10 min the first time, cached after)"
tests/guest/build-debian-guest.sh --quiet

echo "== unit tests under ASan + UBSan"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build-asan/tests/unit_tests

echo "== all tests (unit + real guests)"
ctest --test-dir build --output-on-failure --timeout 1200 "$@"
