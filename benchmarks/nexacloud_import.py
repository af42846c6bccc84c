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
    reconcile     reconcile this month of the imported subscriptions against NexaCloud (rows created)
    reconcile_again  the same reconciliation again (rows updated in place, as the daily job does)
    activate      cutover: switch the service live, press Activate Subscriptions (it only queues a
                  run) and run the background job over the imported drafts, a batch per commit
                  (last: the service is live afterwards)

Each phase's net time is its time minus the baseline of the same run; the ratio column is net
time / target (≤ 1.00 meets it). Targets: runs ≤ 300 s, re-run ≤ 120 s, reconciliations ≤ 60 s
(issue #18), activation ≤ 1200 s (one cron run), memory ≤ 1024 MiB. The reconciliations print their counts per status and
reason; the activation its outcome per draft and orders per second (net time).

    python3 benchmarks/nexacloud_import.py --pg "host=127.0.0.1 port=5432 user=odoo" [--odoo-db bench]
        [--phases baseline,real_run,reconcile,reconcile_again]

``--pg`` is an admin libpq DSN of the PostgreSQL server Odoo uses. The Odoo database is
created with the addon installed when it does not exist. Nothing here runs in CI.
"""
import json
import sys
import time

from harness import ADDON, argument_parser, odoo_args, prepare_database, print_table, run_shell  # first: Odoo's interpreter

import psycopg2
from psycopg2.extensions import make_dsn, parse_dsn

sys.path.insert(0, ADDON)
from core import nexacloud_sample  # noqa: E402

TARGETS = {"test": 300, "dry_run": 300, "real_run": 300, "rerun": 120, "reconcile": 60, "reconcile_again": 60,
           "activate": 1200}  # activation: within one cron run (--limit-time-real-cron 1200; it resumes anyway)
RUN = ("w = env['fusion.billing.nexacloud.import'].create({{'dry_run': {dry}}})\nw.action_run_import()\n"
       "env.cr.commit()\nenv['fusion.billing.import.run']._cron_run_queued()\nenv.cr.commit()\nr = w.run_id\n"
       "result = {{'state': r.state, 'banner': r.banner, 'message': r.banner_message or r.error}}")
RECONCILE = (
    "from datetime import date\nfrom odoo.addons.fusion_centralize_billing.core import periods\n"
    "s = env['fusion.billing.service'].search([('code', '=', 'nexacloud')], limit=1)\n"
    "start = date.today().replace(day=1)\nend = periods.add_period(start, 'month', 1)\n"
    "summary = env['fusion.billing.reconciliation']._run(s, start, end, s._fc_source_bills(start, end))\n"
    "env.cr.commit()\nresult = dict(summary['counts'], **{f'{reason} {currency}': [figures['count'], str(figures['amount'])]\n"
    "    for (reason, currency), figures in sorted(summary.get('reasons', {}).items())})")
ACTIVATE = (
    "s = env['fusion.billing.service'].search([('code', '=', 'nexacloud')], limit=1)\n"
    "s.billing_mode = 'live'\nenv.cr.commit()\n"
    "s.action_activate_subscriptions()\nenv.cr.commit()\n"
    "Run = env['fusion.billing.activation.run']\nrun = Run.search([('service_id', '=', s.id)], limit=1)\n"
    "assert run.state == 'queued', run.state\nRun._cron_run_queued()\nenv.cr.commit()\nrun.invalidate_recordset()\n"
    "result = dict(Run.env['fusion.billing.activation.run.line']._read_group(\n"
    "    [('run_id', '=', run.id)], ['outcome'], ['__count']), state=run.state, drafts=run.draft_count)")
PHASES = {
    "baseline": "result = {}",
    "test": "w = env['fusion.billing.nexacloud.import'].create({})\nw.action_test_connection()\n"
            "result = {'reachable': 'Reachable.' in w.connection_report}",
    # Run Import queues the run; the background job (called here as the scheduler would) runs it.
    "dry_run": RUN.format(dry=True),
    "real_run": RUN.format(dry=False),
    "rerun": RUN.format(dry=False),
    # Reconcile the current period of the imported service against NexaCloud's own tables, as Reconcile does.
    "reconcile": RECONCILE,
    "reconcile_again": RECONCILE,
    # Cutover day: every imported draft confirmed by the background job (the button only queues it).
    "activate": ACTIVATE,
}


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--subscriptions", type=int, default=25_000)
    parser.add_argument("--deployments", type=int, default=60_000)
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="comma-separated phases to run, in this order (default: all); baseline is always run")
    options = parser.parse_args()
    phases = ["baseline"] + [name for name in options.phases.split(",") if name and name != "baseline"]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")

    source_db, role, password = "nexacloud_bench_source", "nexacloud_bench_ro", "bench-ro-password"
    admin = psycopg2.connect(make_dsn(options.pg, dbname="postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {source_db} WITH (FORCE)")
        cursor.execute(f"DROP ROLE IF EXISTS {role}")
        cursor.execute(f"CREATE DATABASE {source_db}")
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
    with odoo_args(options.pg, options.odoo_db) as args:
        prepare_database(options.pg, options.odoo_db, args)
        set_dsn = f"env['ir.config_parameter'].set_param('fusion_billing.nexacloud_dsn', {ro_dsn!r})\nenv.cr.commit()\n"
        results = {}
        for name in phases:
            results[name] = run_shell(args, set_dsn + PHASES[name], name)
            if results[name][2].get("state", "done") != "done":
                sys.exit(f"{name} did not complete: {results[name][2]}")
    print_table(results, TARGETS)
    for name, (seconds, peak, result) in results.items():
        if name.startswith("reconcile"):
            print(f"\n{name}: {json.dumps(result, ensure_ascii=False)}")
        if name == "activate":
            handled = sum(count for key, count in result.items() if key not in ("state", "drafts"))
            net = max(seconds - results["baseline"][0], 0.001)
            print(f"\nactivate: {handled} drafts handled ({result.get('confirmed', 0)} confirmed) in {net:.1f} s net: "
                  f"{handled / net:.1f} orders/s, peak {peak:.0f} MiB")


if __name__ == "__main__":
    main()
