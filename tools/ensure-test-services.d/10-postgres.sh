#!/usr/bin/env bash
# PostgreSQL for the storage tests: a server on 127.0.0.1:5432 that lets user
# "postgres" in without a password (the tests' default HEADSCALE_TEST_PG_DSN).
# Idempotent, and a quick no-op when the server already answers. When it does not:
# install Debian's postgresql if missing, create/start the cluster, and trust
# connections from 127.0.0.1 and ::1. Meant for throwaway test machines only.
set -euo pipefail

HOST=127.0.0.1
PORT=5432

if command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$HOST" -p "$PORT"; then
    exit 0
fi

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    echo "10-postgres: installing postgresql" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
confdir=/etc/postgresql/$version/main
if [ ! -d "$confdir" ]; then
    as_root pg_createcluster --port "$PORT" "$version" main
fi

hba=$confdir/pg_hba.conf
if ! as_root grep -qE '^host[[:space:]]+all[[:space:]]+all[[:space:]]+127\.0\.0\.1/32[[:space:]]+trust' "$hba"; then
    echo "10-postgres: trusting 127.0.0.1 and ::1 in $hba" >&2
    tmp=$(mktemp)
    {
        echo "# headscale-tw test machine: trust local TCP connections (first match wins)"
        echo "host all all 127.0.0.1/32 trust"
        echo "host all all ::1/128 trust"
        echo "# and unix-socket connections: real-client tests reach PostgreSQL from inside a"
        echo "# private network namespace through /var/run/postgresql"
        echo "local all all trust"
        as_root cat "$hba"
    } >"$tmp"
    as_root cp "$tmp" "$hba"
    rm -f "$tmp"
fi

if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
else
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
fi

if ! pg_isready -q -h "$HOST" -p "$PORT" -t 30; then
    echo "10-postgres: PostgreSQL $version is not answering on $HOST:$PORT" \
         "(check 'port' and 'listen_addresses' in $confdir/postgresql.conf)" >&2
    exit 1
fi
