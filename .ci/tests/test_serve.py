"""`.ci/serve` keeps its PostgreSQL cluster: data written before a stop is there after a restart.

Drives the real `.ci/serve` (and `.ci/lib/postgres.sh`) with a stand-in `odoo` on the PATH that
writes or reads a row through the options `.ci/serve` gives it, against a real cluster kept in a
temporary directory (`FUSION_PG_DIR`, `FUSION_PG_PORT`), so it never touches a developer's own.
"""
import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE = os.path.join(ROOT, ".ci", "serve")

# A stand-in for Odoo: it connects as Odoo would with the options .ci/serve passes, records them,
# then (FAKE_ODOO_MODE) writes a row, reads the rows, or writes one and waits to be stopped.
FAKE_ODOO = r"""#!/usr/bin/env bash
set -u
printf '%s\n' "$@" > "$FAKE_ODOO_DIR/argv"
host= port= user= db= action=
while [ $# -gt 0 ]; do
    case "$1" in
        --db_host=*) host=${1#*=} ;; --db_port=*) port=${1#*=} ;; --db_user=*) user=${1#*=} ;;
        -d) db=$2; shift ;; -i|-u) action=$1 ;;
    esac
    shift
done
sql() { psql -X -q -tA -h "$host" -p "$port" -U "$user" "$@"; }
if [ "$action" = -i ]; then sql -d postgres -c "CREATE DATABASE \"$db\"" || exit 3; fi
case "$FAKE_ODOO_MODE" in
    write|wait)
        sql -d "$db" -c "CREATE TABLE IF NOT EXISTS kept (note text); INSERT INTO kept VALUES ('$FAKE_ODOO_NOTE')" || exit 4 ;;
    read)
        sql -d "$db" -c "SELECT note FROM kept ORDER BY note" > "$FAKE_ODOO_DIR/rows" || exit 5 ;;
esac
if [ "$FAKE_ODOO_MODE" = wait ]; then
    trap 'echo TERM > "$FAKE_ODOO_DIR/signal"; exit 0' TERM
    trap 'echo INT > "$FAKE_ODOO_DIR/signal"; exit 0' INT
    echo $$ > "$FAKE_ODOO_DIR/ready"
    while :; do sleep 1 & wait $!; done
fi
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve_env():
    if not shutil.which("psql") or not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        pytest.skip(".ci/serve needs the PostgreSQL server binaries and psql (none on this machine)")
    work = tempfile.mkdtemp(prefix="fusion-billing-serve-test.")
    os.chmod(work, 0o755)  # PostgreSQL runs as 'postgres' when we are root: it must reach the cluster
    bindir = os.path.join(work, "bin")
    os.mkdir(bindir)
    fake = os.path.join(bindir, "odoo")
    with open(fake, "w") as handle:
        handle.write(FAKE_ODOO)
    os.chmod(fake, 0o755)
    home = os.path.join(work, "home")
    os.mkdir(home)
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOME=home, FAKE_ODOO_DIR=work,
               FUSION_PG_DIR=os.path.join(work, "pg"), FUSION_PG_PORT=str(free_port()), FUSION_DB="kept_test")
    env.pop("FUSION_PG_DSN", None)
    try:
        yield env
    finally:
        ready = os.path.join(work, "ready")
        if os.path.exists(ready):  # a stand-in Odoo a failed test left running
            with open(ready) as handle, contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(handle.read()), signal.SIGKILL)
        data = os.path.join(work, "pg", "data")
        if os.path.exists(os.path.join(data, "postmaster.pid")):  # a failed test may leave it running
            owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
            subprocess.run(owner + [_pg_ctl(), "-D", data, "-m", "immediate", "stop"], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


def _pg_ctl():
    return max(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda path: int(path.split("/")[4]))


def serve(env, mode, note="", timeout=120):
    result = subprocess.run([SERVE], env=dict(env, FAKE_ODOO_MODE=mode, FAKE_ODOO_NOTE=note),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout
    return result.stdout


def argv(env):
    with open(os.path.join(env["FAKE_ODOO_DIR"], "argv")) as handle:
        return handle.read().split("\n")


def rows(env):
    with open(os.path.join(env["FAKE_ODOO_DIR"], "rows")) as handle:
        return handle.read().split()


def assert_stopped_and_kept(env):
    data = os.path.join(env["FUSION_PG_DIR"], "data")
    assert os.path.exists(os.path.join(data, "PG_VERSION")), "the kept cluster was deleted"
    assert not os.path.exists(os.path.join(data, "postmaster.pid")), "the cluster was left running"


def test_data_survives_a_stop_and_a_restart(serve_env):
    serve(serve_env, "write", "first")
    assert "-i" in argv(serve_env)  # a new database: the addon is installed
    assert_stopped_and_kept(serve_env)

    serve(serve_env, "write", "second")
    assert "-u" in argv(serve_env)  # the database is still there: the addon is upgraded
    serve(serve_env, "read")
    assert rows(serve_env) == ["first", "second"]
    assert_stopped_and_kept(serve_env)


def test_sigterm_stops_odoo_then_the_cluster_and_keeps_the_data(serve_env):
    process = subprocess.Popen([SERVE], env=dict(serve_env, FAKE_ODOO_MODE="wait", FAKE_ODOO_NOTE="before-term"),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = os.path.join(serve_env["FAKE_ODOO_DIR"], "ready")
    deadline = time.monotonic() + 120
    while not os.path.exists(ready):
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "odoo never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    with open(os.path.join(serve_env["FAKE_ODOO_DIR"], "signal")) as handle:
        assert handle.read().strip() == "TERM", output  # Odoo was asked to stop (once), not orphaned
    assert_stopped_and_kept(serve_env)
    serve(serve_env, "read")
    assert rows(serve_env) == ["before-term"]


def test_odoo_is_given_one_database_and_no_dbfilter(serve_env):
    """README 'Run it': `-d <database>` and no dbfilter, so API calls go straight to it."""
    serve(serve_env, "write", "x")
    args = argv(serve_env)
    assert args[args.index("-d") + 1] == "kept_test"
    assert not any(arg.startswith(("--db-filter", "--dbfilter")) for arg in args), args


def test_a_throwaway_cluster_is_still_removed(serve_env):
    """.ci/run's cluster (no kept directory) leaves nothing behind; a kept one survives pg_stop."""
    script = f"""
        source {ROOT}/.ci/lib/postgres.sh
        pg_start >/dev/null || exit 1
        echo "$PG_DATA"
        pg_stop
    """
    result = subprocess.run(["bash", "-c", script], env=serve_env, stdout=subprocess.PIPE, text=True, check=True)
    throwaway = result.stdout.strip().splitlines()[-1]
    assert throwaway.startswith(tempfile.gettempdir()) and not os.path.exists(throwaway)
