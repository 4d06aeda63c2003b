#!/usr/bin/env bash
# One entry point for a fresh Debian machine (or any machine with Python 3.11+):
#   ./dev.sh run   [twistd args]   run the server on embedded defaults (or ./config.yaml)
#   ./dev.sh test  [trial args]    run the whole test suite (PostgreSQL and real-client tests too)
# Each bootstraps .venv from PyPI when it is missing or setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}

need_root_install() {
    # Install Debian packages when a tool is missing; only possible as root.
    if [ "$(id -u)" != 0 ]; then
        echo "dev.sh: missing $*; install it (Debian: apt-get install $*)" >&2
        exit 1
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

bootstrap() {
    command -v python3 >/dev/null || need_root_install python3
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "dev.sh: Python 3.11 or newer is required (found $(python3 --version))" >&2; exit 1; }
    python3 -c 'import venv, ensurepip' 2>/dev/null || need_root_install python3-venv
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ setup.py -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e '.[dev]'
        touch "$stamp"
    fi
}

# The checkout's top level on sys.path lets Twisted's plugin scan find twisted/plugins/
# (an editable install maps only src/); a regular `pip install .` installs the drop-in.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

cmd=${1:-}
shift || true
case "$cmd" in
    run)
        bootstrap
        mkdir -p var
        exec "$VENV/bin/twistd" --nodaemon --pidfile= headscale "$@"
        ;;
    test)
        bootstrap
        tools/ensure-test-services.sh
        exec "$VENV/bin/python" tools/run_tests.py "$@"
        ;;
    *)
        echo "usage: ./dev.sh run|test [args]" >&2
        exit 2
        ;;
esac
