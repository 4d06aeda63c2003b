#!/usr/bin/env bash
# A real authoritative DNS server for the `tailscale cert` (DNS-01) tests: Debian's knot,
# which accepts TSIG-signed RFC 2136 updates; kdig (knot-dnsutils) checks what it serves.
set -euo pipefail
if [ -x /usr/sbin/knotd ] && [ -x /usr/bin/kdig ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-services: knot is missing; install it (Debian: apt-get install knot knot-dnsutils)" >&2
    exit 1
fi
apt-get update -qq >/dev/null
# The tests start knotd themselves on loopback ports; the packaged service is not needed.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq knot knot-dnsutils >/dev/null
