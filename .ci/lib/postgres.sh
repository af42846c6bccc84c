# Local PostgreSQL clusters (sourced by .ci/run and .ci/serve).
#   pg_start            a throwaway cluster in a fresh temporary directory (.ci/run); pg_stop deletes it.
#   pg_start_kept DIR PORT
#                       the cluster kept in DIR (created on first use, .ci/serve); pg_stop stops it
#                       (only if this shell started it) and never deletes anything.
# Both export PG_ADMIN_DSN (libpq DSN of a superuser) and PG_ODOO_ARGS (odoo db options).
# With FUSION_TEST_PG_DSN set, that server is used instead and nothing is started or stopped.
#
# What pg_stop may do is decided by pg_start* and kept in PG_DATA / PG_THROWAWAY / PG_STARTED_HERE,
# never by a variable the caller sets around one call: `VAR=x pg_start` sets VAR for that call only.

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
PG_DATA=""          # the cluster's directory (data/ and its socket and log)
PG_THROWAWAY=""     # set to PG_DATA only when pg_start created it with mktemp: pg_stop may delete it
PG_STARTED_HERE=""  # 1 when this shell started the server (a kept cluster found running is left running)

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

as_pg_owner() {
    # PostgreSQL refuses to run as root: use the postgres account when we are root.
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_start() {
    if [ -n "${FUSION_TEST_PG_DSN:-}" ]; then
        PG_ADMIN_DSN=$FUSION_TEST_PG_DSN
        PG_ODOO_ARGS=$(python3 - "$PG_ADMIN_DSN" <<'PY'
import sys
from urllib.parse import urlparse
dsn = sys.argv[1]
if "://" in dsn:
    u = urlparse(dsn)
    parts = dict(host=u.hostname, port=u.port, user=u.username, password=u.password)
else:
    parts = dict(kv.split("=", 1) for kv in dsn.split())
flags = {"host": "--db_host", "port": "--db_port", "user": "--db_user", "password": "--db_password"}
print(" ".join(f"{flags[k]}={v}" for k, v in parts.items() if k in flags and v))
PY
)
        export PG_ADMIN_DSN PG_ODOO_ARGS
        return 0
    fi
    _pg_launch "$(mktemp -d "${TMPDIR:-/tmp}/fusion-billing-pg.XXXXXX")" "${PG_PORT:-$(free_port)}" throwaway
}

pg_start_kept() {
    # The cluster kept in $1 (created there on first use), served on port $2.
    local dir=$1 port=$2
    [ -n "$dir" ] && [ -n "$port" ] || { echo "pg_start_kept DIR PORT"; return 1; }
    mkdir -p "$dir" || return 1
    _pg_launch "$(cd "$dir" && pwd)" "$port" kept
}

_pg_launch() {
    local dir=$1 port=$2 kind=$3 fresh=1 running_port
    [ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL server binaries not found (looked in $PG_BIN)"; return 1; }
    [ -n "$dir" ] && [ -d "$dir" ] || { echo "no directory for the PostgreSQL cluster"; return 1; }
    PG_DATA=$dir
    if [ "$kind" = throwaway ]; then
        PG_THROWAWAY=$dir
    fi
    [ -f "$PG_DATA/data/PG_VERSION" ] && fresh=0
    chmod 755 "$PG_DATA"
    [ "$(id -u)" -eq 0 ] && chown postgres "$PG_DATA"
    if [ "$fresh" -eq 1 ]; then
        as_pg_owner "$PG_BIN/initdb" -D "$PG_DATA/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null || return 1
        # Admin roles connect freely; any other role (e.g. the importer's read-only one) needs its password.
        printf '%s\n' 'local all all trust' 'host all postgres 127.0.0.1/32 trust' 'host all odoo 127.0.0.1/32 trust' \
            'host all all 127.0.0.1/32 scram-sha-256' | as_pg_owner tee "$PG_DATA/data/pg_hba.conf" >/dev/null
    fi
    if as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" status >/dev/null 2>&1; then
        # Already running (another .ci/serve of this checkout, or one killed with SIGKILL): use it, leave it running.
        running_port=$(sed -n 4p "$PG_DATA/data/postmaster.pid")
        echo "PostgreSQL is already running in $PG_DATA (port $running_port): using it."
        port=$running_port
        PG_STARTED_HERE=""
    else
        local speed=""
        # A throwaway cluster trades durability for speed; a kept one must survive a crash.
        [ "$kind" = throwaway ] && speed="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -l "$PG_DATA/log" -w -t 60 start -o \
            "-p $port -k $PG_DATA -c listen_addresses=127.0.0.1 $speed -c max_connections=200" \
            >/dev/null || { cat "$PG_DATA/log"; return 1; }
        PG_STARTED_HERE=1
    fi
    # Odoo refuses the 'postgres' role: give it its own superuser.
    [ "$fresh" -eq 1 ] && { psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE ROLE odoo SUPERUSER LOGIN" || return 1; }
    PG_ADMIN_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
    PG_ODOO_ARGS="--db_host=127.0.0.1 --db_port=$port --db_user=odoo"
    export PG_ADMIN_DSN PG_ODOO_ARGS
}

pg_stop() {
    [ -n "$PG_DATA" ] || return 0
    if [ -n "$PG_THROWAWAY" ] && [ "$PG_THROWAWAY" = "$PG_DATA" ]; then
        as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -m immediate stop >/dev/null 2>&1
        rm -rf -- "$PG_THROWAWAY"  # created by mktemp in pg_start: nobody else's data
    elif [ -n "$PG_STARTED_HERE" ]; then
        as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -m fast -w -t 60 stop >/dev/null 2>&1
    fi
    PG_DATA="" PG_THROWAWAY="" PG_STARTED_HERE=""
}
