#!/usr/bin/env bash
# Metrics tests: Debian's Prometheus (the real server and promtool). The tests check the
# shipped scrape config and alert rules with promtool, and run a Prometheus inside the
# real-client namespace that scrapes the server and evaluates every Grafana panel query.
#
# Idempotent, and a no-op when both binaries are there. The package is installed with
# service starts refused (a temporary policy-rc.d answering 101) and its unit disabled,
# so no Prometheus daemon runs on this machine; the tests start their own by PID.
# Problems are reported loudly but do not stop the rest of the suite: the tests that
# need Prometheus then FAIL with the reason (they never skip).
set -uo pipefail

warn() { echo "70-prometheus: $*" >&2; }

[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] && exit 0

if [ "$(id -u)" != 0 ]; then
    warn "missing prometheus/promtool; install them as root (Debian: apt-get install prometheus)"
    exit 0
fi

guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# written by headscale-tw tools/ensure-test-services.d/70-prometheus.sh during apt-get\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
fi
apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null \
    || warn "apt-get install prometheus failed"
[ -n "$guard" ] && rm -f "$guard"

if command -v systemctl >/dev/null; then
    systemctl disable prometheus >/dev/null 2>&1 || true
fi
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || warn "prometheus or promtool still missing after the install"
exit 0
