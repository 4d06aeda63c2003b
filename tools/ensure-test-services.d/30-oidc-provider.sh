#!/usr/bin/env bash
# OIDC tests: a real OpenID Provider (the npm package oidc-provider, pinned in
# tools/oidc-provider/package-lock.json) started by tools/oidc-provider/provider.mjs.
#
# 1. Node: the pinned oidc-provider release supports Node 22 and later. When the
#    machine's `node` is older or missing (Debian bookworm ships 18), bring the
#    release named in tools/oidc-provider/node-version from the npm package `node`
#    (it ships the binaries) into $HEADSCALE_TW_CACHE/node-<version>. When npm
#    itself is missing, install Debian's nodejs and npm first (root only).
# 2. `npm ci` the launcher's pinned dependencies into tools/oidc-provider/node_modules
#    (ignored by git), skipped when the lock file has not changed since the last run.
#
# Idempotent. Problems are reported loudly but do not stop the rest of the suite:
# the OIDC tests then FAIL with the reason (they never skip).
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dir="$root/tools/oidc-provider"
warn() { echo "30-oidc-provider: $*" >&2; }

want=$(tr -d '[:space:]' <"$dir/node-version")
want_major=${want%%.*}
cache=${HEADSCALE_TW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/headscale-tw}
prefix="$cache/node-$want"
cached_node="$prefix/node_modules/node/bin/node"

major_of() { "$1" -e 'process.stdout.write(process.versions.node.split(".")[0])' 2>/dev/null; }

node_bin=""
if command -v node >/dev/null 2>&1 && [ "$(major_of node)" -ge "$want_major" ] 2>/dev/null; then
    node_bin=$(command -v node)
elif [ -x "$cached_node" ] && [ "$(major_of "$cached_node")" = "$want_major" ]; then
    node_bin=$cached_node
else
    if ! command -v npm >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            warn "installing Debian's nodejs and npm (to fetch Node $want from the npm registry)"
            apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null \
                || warn "apt-get install nodejs npm failed"
        else
            warn "npm is missing; install it as root (Debian: apt-get install nodejs npm)"
        fi
    fi
    if command -v npm >/dev/null 2>&1; then
        warn "bringing Node $want (npm package node@$want) into $prefix"
        mkdir -p "$prefix"
        npm install --prefix "$prefix" --no-save --no-audit --no-fund --loglevel=error "node@$want" >&2 \
            || warn "npm install node@$want failed"
    fi
    if [ -x "$cached_node" ] && [ "$(major_of "$cached_node")" = "$want_major" ]; then
        node_bin=$cached_node
    else
        warn "no Node >= $want_major available; the OIDC provider tests will fail"
        exit 0
    fi
fi

if ! command -v npm >/dev/null 2>&1; then
    warn "npm is missing; cannot install the provider's packages; the OIDC provider tests will fail"
    exit 0
fi

stamp="$dir/node_modules/.headscale-tw-lock.sha256"
lock_sum=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$lock_sum" ] && [ -d "$dir/node_modules/oidc-provider" ]; then
    exit 0
fi
echo "30-oidc-provider: npm ci in $dir (node: $node_bin)" >&2
if (cd "$dir" && PATH="$(dirname "$node_bin"):$PATH" npm ci --no-audit --no-fund --loglevel=error >&2); then
    echo "$lock_sum" >"$stamp"
else
    warn "npm ci failed; the OIDC provider tests will fail"
fi
exit 0
