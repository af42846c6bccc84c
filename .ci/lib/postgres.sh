# Throwaway PostgreSQL for the test tiers (sourced by .ci/run and .ci/serve).
# pg_start exports PG_ADMIN_DSN (libpq DSN of a superuser) and PG_ODOO_ARGS (odoo db options).
# With FUSION_TEST_PG_DSN set, that server is used instead and nothing is started.
# With PG_KEEP_DIR set (.ci/serve), the cluster lives there and survives pg_stop.

PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}
PG_DATA=""

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
    [ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL server binaries not found (looked in $PG_BIN)"; return 1; }
    local port=${PG_PORT:-$(free_port)} fresh=1
    if [ -n "${PG_KEEP_DIR:-}" ]; then
        PG_DATA=$PG_KEEP_DIR; mkdir -p "$PG_DATA"
        [ -f "$PG_DATA/data/PG_VERSION" ] && fresh=0
    else
        PG_DATA=$(mktemp -d /tmp/fusion-billing-pg.XXXXXX)
    fi
    chmod 755 "$PG_DATA"
    [ "$(id -u)" -eq 0 ] && chown postgres "$PG_DATA"
    if [ "$fresh" -eq 1 ]; then
        as_pg_owner "$PG_BIN/initdb" -D "$PG_DATA/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null || return 1
        # Admin roles connect freely; any other role (e.g. the importer's read-only one) needs its password.
        printf '%s\n' 'local all all trust' 'host all postgres 127.0.0.1/32 trust' 'host all odoo 127.0.0.1/32 trust' \
            'host all all 127.0.0.1/32 scram-sha-256' | as_pg_owner tee "$PG_DATA/data/pg_hba.conf" >/dev/null
    fi
    as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -l "$PG_DATA/log" -w -t 60 start -o \
        "-p $port -k $PG_DATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >/dev/null || { cat "$PG_DATA/log"; return 1; }
    # Odoo refuses the 'postgres' role: give it its own superuser.
    [ "$fresh" -eq 1 ] && { psql -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE ROLE odoo SUPERUSER LOGIN" || return 1; }
    PG_ADMIN_DSN="host=127.0.0.1 port=$port user=postgres dbname=postgres"
    PG_ODOO_ARGS="--db_host=127.0.0.1 --db_port=$port --db_user=odoo"
    export PG_ADMIN_DSN PG_ODOO_ARGS
}

pg_stop() {
    [ -n "$PG_DATA" ] || return 0
    if [ -n "${PG_KEEP_DIR:-}" ]; then
        as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -m fast stop >/dev/null 2>&1
    else
        as_pg_owner "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -m immediate stop >/dev/null 2>&1
        rm -rf "$PG_DATA"
    fi
    PG_DATA=""
}
