"""Shared plumbing of the benchmark scripts: find Odoo, prepare a database, run code in `odoo shell`.

Importing it first makes a script run under Odoo's own interpreter: ``python3 benchmarks/x.py``
works even when ``psycopg2`` belongs to Odoo's interpreter (e.g. /opt/odoo19/venv) and not to
``python3``: the script is started again with the interpreter of the ``odoo`` command (its
``#!`` line), or with ``$ODOO_PYTHON`` when set.
"""
import argparse
import concurrent.futures
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REEXEC_MARK = "FUSION_BENCH_REEXEC"


def odoo_command():
    for name in ("odoo", "odoo-bin"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no 'odoo' command on PATH")


def odoo_python():
    """The interpreter that runs Odoo: $ODOO_PYTHON, else the ``#!`` line of the odoo command."""
    if os.environ.get("ODOO_PYTHON"):
        return os.environ["ODOO_PYTHON"]
    command = shutil.which("odoo") or shutil.which("odoo-bin")
    if not command:
        return None
    with open(command, "rb") as handle:
        first = handle.readline().decode(errors="replace").strip()
    if not first.startswith("#!"):
        return None
    words = first[2:].split()
    if words and os.path.basename(words[0]) == "env":  # "#!/usr/bin/env [-S] python3"
        words = [word for word in words[1:] if not word.startswith("-")]
        return shutil.which(words[0]) if words else None
    return words[0] if words else None


def _run_under_odoo_python():
    """Start this script again with Odoo's interpreter when this one cannot import psycopg2."""
    try:
        import psycopg2  # noqa: F401
        return
    except ImportError:
        pass
    python = odoo_python()
    if os.environ.get(REEXEC_MARK) or not python or not os.access(python, os.X_OK):
        sys.exit(f"{sys.executable} cannot import psycopg2 and Odoo's interpreter was not found "
                 f"({python or 'no odoo command on PATH'}). Run the benchmark with the Python that runs "
                 "Odoo, e.g. /opt/odoo19/venv/bin/python benchmarks/<script>.py …, or set ODOO_PYTHON.")
    print(f"(running with Odoo's interpreter {python})", file=sys.stderr, flush=True)
    os.environ[REEXEC_MARK] = "1"
    os.execv(python, [python, os.path.abspath(sys.argv[0])] + sys.argv[1:])


_run_under_odoo_python()

import psycopg2  # noqa: E402
from psycopg2.extensions import make_dsn, parse_dsn  # noqa: E402

ADDON = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY_TARGET_MIB = 1024


def argument_parser(doc, default_db="fusion_billing_bench"):
    """The options every benchmark takes: the PostgreSQL server and the Odoo database."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", required=True, help="admin libpq DSN of the PostgreSQL server")
    parser.add_argument("--odoo-db", default=default_db)
    return parser


@contextlib.contextmanager
def odoo_args(pg, database):
    """Command-line arguments selecting ``database`` on server ``pg`` with this addon on the path."""
    params = parse_dsn(pg)
    flags = {"host": "--db_host", "port": "--db_port", "user": "--db_user", "password": "--db_password"}
    with tempfile.TemporaryDirectory() as addons:
        os.symlink(ADDON, os.path.join(addons, "fusion_centralize_billing"))
        yield ["-d", database, f"--addons-path={addons},{ADDON}/.ci/addons"] + [
            f"{flag}={params[key]}" for key, flag in flags.items() if params.get(key)]


def prepare_database(pg, database, args):
    """Create the Odoo database with the addon installed, or upgrade the addon in it."""
    with psycopg2.connect(make_dsn(pg, dbname="postgres")) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database])
        exists = bool(cursor.fetchone())
    print(f"{'updating' if exists else 'creating'} Odoo database {database} with the addon…", flush=True)
    subprocess.run([odoo_command(), "-u" if exists else "-i", "fusion_centralize_billing", "--stop-after-init",
                    "--no-http", "--log-level=warn"] + args, check=True)


def settle(pg, database):
    """``VACUUM ANALYZE`` the database after a bulk set-up: production tables are in the steady
    state autovacuum keeps them in, so a timed phase should not pay for the set-up's writes
    (fresh statistics, hint bits, autovacuum running beside it)."""
    connection = psycopg2.connect(make_dsn(pg, dbname=database))
    connection.autocommit = True  # VACUUM cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()


def run_shell(args, code, label, processes=1):
    """Run ``code`` (which must set ``result``, a dict) in ``processes`` fresh ``odoo shell``
    processes started together (as that many Odoo workers would run it).

    Returns ``(wall seconds, peak RSS MiB of the largest process, result)``; with several
    processes, ``result`` holds each one's under ``"workers"``.
    """
    code = (f"import json, resource\n{code}\n"
            "result['peak_kib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print('BENCH-RESULT ' + json.dumps(result, default=str))\n")
    started = time.monotonic()
    running = [subprocess.Popen([odoo_command(), "shell", "--no-http", "--log-level=warn"] + args,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(processes)]
    with concurrent.futures.ThreadPoolExecutor(processes) as pool:  # all fed and drained at once
        outputs = list(pool.map(lambda process: process.communicate(code)[0], running))
    seconds = time.monotonic() - started
    results = []
    for process, output in zip(running, outputs):
        line = next((l for l in output.splitlines() if l.startswith("BENCH-RESULT ")), None)
        if process.returncode or not line:
            sys.exit(f"{label} failed:\n{output[-4000:]}")
        results.append(json.loads(line.split(" ", 1)[1]))
    peak = max(result.pop("peak_kib") for result in results) / 1024
    print(f"  {label}: {seconds:.1f} s", flush=True)
    return seconds, peak, results[0] if processes == 1 else {"workers": results}


def print_table(results, targets, baseline="baseline"):
    """Phase table: net time = time minus the baseline phase's (Odoo boot) of the same run."""
    boot = results[baseline][0]
    print(f"\n{'phase':<12} {'seconds':>8} {'net s':>8} {'target s':>9} {'ratio':>6} {'peak MiB':>9} "
          f"{'mem ratio':>9}  result")
    for name, (seconds, peak, result) in results.items():
        net = seconds if name == baseline else max(seconds - boot, 0.0)
        target = targets.get(name)
        ratio = f"{net / target:.2f}" if target else "-"
        print(f"{name:<12} {seconds:8.1f} {net:8.1f} {target or '-':>9} {ratio:>6} {peak:9.0f} "
              f"{peak / MEMORY_TARGET_MIB:9.2f}  {json.dumps(result, ensure_ascii=False)[:200]}")
