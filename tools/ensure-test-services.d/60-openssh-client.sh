#!/usr/bin/env bash
# The SSH check mode tests run `tailscale ssh`, a wrapper that executes the system `ssh`
# client with a ProxyCommand through tailscaled: Debian's openssh-client provides it.
set -euo pipefail
if command -v ssh >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-test-services: no ssh client; install it (Debian: apt-get install openssh-client)" >&2
    exit 1
fi
apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openssh-client >/dev/null
if ! command -v ssh >/dev/null 2>&1; then
    echo "ensure-test-services: openssh-client was installed but no ssh command is on PATH" >&2
    exit 1
fi
