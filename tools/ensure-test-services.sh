#!/usr/bin/env bash
# Make sure what the tests need is installed and running. Each step is idempotent.
set -euo pipefail
cd "$(dirname "$0")"
for step in ensure-test-services.d/*.sh; do
    [ -e "$step" ] || continue
    bash "$step"
done
