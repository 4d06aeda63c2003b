#!/usr/bin/env bash
# A real browser for the sign-in page tests: Debian's chromium, run headless inside the test's
# private network namespace (tests/web/test_chromium_pages.py). Nothing downloads a browser:
# only the Debian package is used, from /usr/bin/chromium.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-services: chromium is missing; install it (Debian: apt-get install chromium)" >&2
    exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
if [ ! -x /usr/bin/chromium ]; then
    echo "ensure-test-services: installing chromium did not give /usr/bin/chromium" >&2
    exit 1
fi
