#!/usr/bin/env bash
# A real ACME server for the certificate tests: Debian's pebble (with pebble-challtestsrv).
set -euo pipefail
if [ -x /usr/bin/pebble ] && [ -x /usr/bin/pebble-challtestsrv ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-services: pebble is missing; install it (Debian: apt-get install pebble)" >&2
    exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pebble >/dev/null
