#!/usr/bin/env python3
"""Benchmark of the NexaCloud import at NexaCloud's real size (issue #4).

Builds a source database of ~20,000 users, 25,000 subscriptions, 60,000 deployments and 40
plans, then runs each phase in its own ``odoo shell`` process and prints wall time and peak
memory (max RSS of that process):

    baseline      Odoo boots, does nothing (the fixed cost inside every phase)
    test          Test Connection
    dry_run       dry run (everything rolled back)
    real_run      real run (committed)
    rerun         the same real run again, source unchanged (must create/update nothing)

Each phase's net time is its time minus the baseline of the same run; the ratio column is net
time / target (≤ 1.00 meets it). Targets: runs ≤ 300 s, re-run ≤ 120 s, memory ≤ 1024 MiB.

    python3 benchmarks/nexacloud_import.py --pg "host=127.0.0.1 port=5432 user=odoo" [--odoo-db bench]

``--pg`` is an admin libpq DSN of the PostgreSQL server Odoo uses. The Odoo database is
created with the addon installed when it does not exist. Nothing here runs in CI.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

ADDON = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ADDON)
from core import nexacloud_sample  # noqa: E402

TARGETS = {"test": 300, "dry_run": 300, "real_run": 300, "rerun": 120}
MEMORY_TARGET_MIB = 1024
PHASES = {
    "baseline": "result = {}",
    "test": "w = env['fusion.billing.nexacloud.import'].create({})\nw.action_test_connection()\n"
            "result = {'reachable': 'Reachable.' in w.connection_report}",
    "dry_run": "w = env['fusion.billing.nexacloud.import'].create({'dry_run': True})\nw.action_run_import()\n"
               "result = {'banner': w.banner, 'message': w.banner_message}",
    "real_run": "w = env['fusion.billing.nexacloud.import'].create({'dry_run': False})\nw.action_run_import()\n"
                "env.cr.commit()\nresult = {'banner': w.banner, 'message': w.banner_message}",
}
PHASES["rerun"] = PHASES["real_run"]


def odoo_command():
    for name in ("odoo", "odoo-bin"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("no 'odoo' command on PATH")


def odoo_args(pg, database, addons):
    params = parse_dsn(pg)
    flags = {"host": "--db_host", "port": "--db_port", "user": "--db_user", "password": "--db_password"}
    return ["-d", database, f"--addons-path={addons},{ADDON}/.ci/addons"] + [
        f"{flag}={params[key]}" for key, flag in flags.items() if params.get(key)]


def run_phase(name, args, dsn):
    code = (f"import json, resource\nenv['ir.config_parameter'].set_param('fusion_billing.nexacloud_dsn', {dsn!r})\n"
            f"{PHASES[name]}\nresult['peak_kib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print('BENCH-RESULT ' + json.dumps(result))\n")
    started = time.monotonic()
    process = subprocess.Popen([odoo_command(), "shell", "--no-http", "--log-level=warn"] + args,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = process.communicate(code)
    seconds = time.monotonic() - started
    line = next((l for l in output.splitlines() if l.startswith("BENCH-RESULT ")), None)
    if process.returncode or not line:
        sys.exit(f"phase {name} failed:\n{output[-4000:]}")
    result = json.loads(line.split(" ", 1)[1])
    return seconds, result.pop("peak_kib") / 1024, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", required=True, help="admin libpq DSN of the PostgreSQL server")
    parser.add_argument("--odoo-db", default="fusion_billing_bench")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--subscriptions", type=int, default=25_000)
    parser.add_argument("--deployments", type=int, default=60_000)
    options = parser.parse_args()

    source_db, role, password = "nexacloud_bench_source", "nexacloud_bench_ro", "bench-ro-password"
    admin = psycopg2.connect(make_dsn(options.pg, dbname="postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {source_db} WITH (FORCE)")
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE DATABASE {source_db}")
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [options.odoo_db])
        odoo_db_exists = bool(cursor.fetchone())
    started = time.monotonic()
    with psycopg2.connect(make_dsn(options.pg, dbname=source_db)) as connection, connection.cursor() as cursor:
        nexacloud_sample.load_scale(cursor, users=options.users, subscriptions=options.subscriptions,
                                    deployments=options.deployments)
        nexacloud_sample.create_read_only_role(cursor, role, password, source_db)
    print(f"source built in {time.monotonic() - started:.1f} s: {options.users} users, "
          f"{options.subscriptions} subscriptions, {options.deployments} deployments, 40 plans")
    params = parse_dsn(options.pg)
    ro_dsn = make_dsn(host=params.get("host", "127.0.0.1"), port=params.get("port", "5432"), dbname=source_db,
                      user=role, password=password)

    with tempfile.TemporaryDirectory() as addons:
        os.symlink(ADDON, os.path.join(addons, "fusion_centralize_billing"))
        args = odoo_args(options.pg, options.odoo_db, addons)
        if not odoo_db_exists:
            print(f"creating Odoo database {options.odoo_db} with the addon installed…")
            subprocess.run([odoo_command(), "-i", "fusion_centralize_billing", "--stop-after-init", "--no-http",
                            "--log-level=warn"] + args, check=True)
        results = {name: run_phase(name, args, ro_dsn) for name in PHASES}
    boot = results["baseline"][0]
    print(f"\n{'phase':<10} {'seconds':>8} {'net s':>8} {'target s':>9} {'ratio':>6} {'peak MiB':>9} {'mem ratio':>9}  result")
    for name, (seconds, peak, result) in results.items():
        net = max(seconds - boot, 0.0) if name != "baseline" else seconds
        target = TARGETS.get(name)
        ratio = f"{net / target:.2f}" if target else "-"
        print(f"{name:<10} {seconds:8.1f} {net:8.1f} {target or '-':>9} {ratio:>6} {peak:9.0f} "
              f"{peak / MEMORY_TARGET_MIB:9.2f}  {json.dumps(result, ensure_ascii=False)[:160]}")


if __name__ == "__main__":
    main()
