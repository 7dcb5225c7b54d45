#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests of telemetry-store-pg, on loopback only.
#
#   scripts/pg-test-cluster.sh start   # prints the URL, e.g. postgres://postgres@127.0.0.1:54329/postgres
#   scripts/pg-test-cluster.sh stop
#   scripts/pg-test-cluster.sh url     # the URL of the running cluster
#
# Tests read the URL from GYM_TELEMETRY_TEST_PG:
#   export GYM_TELEMETRY_TEST_PG="$(scripts/pg-test-cluster.sh start)"
#
# The cluster lives in a temporary directory (PG_TEST_DIR, default /tmp/gym-telemetry-pg), runs
# as the `postgres` account (initdb refuses root), listens on 127.0.0.1 only (PG_TEST_PORT,
# default 54329) and trusts every local connection: it holds test data only and is deleted by
# `stop`. Needs the server binaries (Debian: `apt-get install -y postgresql`).
set -euo pipefail

DIR="${PG_TEST_DIR:-/tmp/gym-telemetry-pg}"
PORT="${PG_TEST_PORT:-54329}"
# The multi-host test (scripts/pg-multihost.sh) runs a cluster inside a network namespace on
# the namespace's address, trusting its test subnet; everything else keeps loopback.
LISTEN="${PG_TEST_LISTEN:-127.0.0.1}"
HBA_NET="${PG_TEST_HBA_NET:-}"
URL="postgres://postgres@${LISTEN}:${PORT}/postgres"

bindir() {
    if command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v pg_ctl)"
        return
    fi
    local d
    d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [[ -z "$d" ]]; then
        echo "pg-test-cluster: no PostgreSQL server binaries (apt-get install -y postgresql)" >&2
        exit 1
    fi
    echo "$d"
}

as_postgres() {
    if [[ "$(id -u)" == 0 ]]; then
        # runuser keeps no controlling terminal and needs no password.
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

case "${1:-}" in
start)
    BIN="$(bindir)"
    if [[ -f "$DIR/data/postmaster.pid" ]] && as_postgres "$BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; then
        echo "$URL"
        exit 0
    fi
    rm -rf "$DIR"
    mkdir -p "$DIR"
    if [[ "$(id -u)" == 0 ]]; then
        chown postgres: "$DIR"
    fi
    as_postgres "$BIN/initdb" -D "$DIR/data" -U postgres --auth=trust --no-sync \
        >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
    if [[ -n "$HBA_NET" ]]; then
        echo "host all all $HBA_NET trust" >>"$DIR/data/pg_hba.conf"
    fi
    # fsync off: a throwaway cluster for tests (a crash loses it, and nothing of value).
    as_postgres "$BIN/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w -t 60 start \
        -o "-c listen_addresses=$LISTEN -p $PORT -k $DIR -c fsync=off -c max_connections=200" \
        >/dev/null || { cat "$DIR/server.log" >&2; exit 1; }
    echo "$URL"
    ;;
stop)
    BIN="$(bindir)"
    if [[ -d "$DIR/data" ]]; then
        as_postgres "$BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$DIR"
    ;;
url)
    echo "$URL"
    ;;
*)
    echo "usage: $0 start|stop|url" >&2
    exit 2
    ;;
esac
