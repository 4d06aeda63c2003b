#!/usr/bin/env bash
# Packaging and front-proxy tests: Debian's nginx (the tests run `nginx -t` on the shipped
# sites and start nginx in front of the server inside the real-client namespace) and
# systemd-analyze (from systemd: `verify` and `security --offline=true` on the shipped unit).
#
# Idempotent, and a no-op when both are there. nginx is installed with service starts
# refused (a temporary policy-rc.d answering 101), so installing it never starts a
# daemon on port 80 of this machine; the tests start their own nginx by PID.
# Problems are reported loudly but do not stop the rest of the suite: the tests that
# need these tools then FAIL with the reason (they never skip).
set -uo pipefail

warn() { echo "40-nginx-systemd: $*" >&2; }

missing=()
[ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v systemd-analyze >/dev/null || missing+=(systemd)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
    warn "missing ${missing[*]}; install them as root (Debian: apt-get install ${missing[*]})"
    exit 0
fi

guard=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# written by headscale-tw tools/ensure-test-services.d/40-nginx-systemd.sh during apt-get\nexit 101\n' \
        >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
fi
apt-get update -qq >/dev/null \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || warn "apt-get install ${missing[*]} failed"
[ -n "$guard" ] && rm -f "$guard"

# Debian enables its default site on port 80; the tests never use it, and a later
# boot of this machine should not start a web server nobody asked for.
if [ -x /usr/sbin/nginx ] && command -v systemctl >/dev/null; then
    systemctl disable nginx >/dev/null 2>&1 || true
fi
exit 0
