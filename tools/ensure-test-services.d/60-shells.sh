#!/usr/bin/env bash
# zsh and fish for the shell-completion tests (tests/cli/test_completion.py), which
# parse and run the scripts `headscale completion zsh|fish` prints in the real shells.
# Idempotent: a quick no-op when both are on PATH; otherwise Debian's packages are
# installed, and the step fails loudly if they still cannot be found.
set -euo pipefail

missing=()
for shell in zsh fish; do
    command -v "$shell" >/dev/null 2>&1 || missing+=("$shell")
done
if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

echo "60-shells: installing ${missing[*]}" >&2
as_root apt-get update -q
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"

for shell in "${missing[@]}"; do
    if ! command -v "$shell" >/dev/null 2>&1; then
        echo "60-shells: $shell is still missing after installing it" >&2
        exit 1
    fi
done
