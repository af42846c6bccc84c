#!/usr/bin/env python3
"""Benchmark of event ingestion through the real HTTP server (issue #5).

Starts Odoo with ``--workers``, pushes ``--events`` events in batches of 100 from
``--clients`` concurrent clients (plus 10 % replayed batches), then, in the same run, inserts
the same rows with raw psycopg2 ``execute_values`` into the event table itself (baseline; a
temporary copy without foreign keys or WAL is also timed, for reference). Prints events/s of
both and their ratio (target ≥ 0.25), p50/p95 request latency, and checks the stored totals:
every event stored once, usage rollups equal to the sum sent (zero lost, zero double-counted).

    python3 benchmarks/events_ingest.py --pg "host=127.0.0.1 port=5432 user=odoo" [--odoo-db bench]

The Odoo database is created with the addon installed when it does not exist. Not run by CI.
"""
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from harness import argument_parser, odoo_args, odoo_command, prepare_database, run_shell  # first: Odoo's interpreter

import psycopg2
from psycopg2.extensions import make_dsn
from psycopg2.extras import execute_values

SETUP = """
service = env['fusion.billing.service'].create({'name': 'Bench %(tag)s', 'code': 'bench_%(tag)s'})
metric = env['fusion.billing.metric'].create({'service_id': service.id, 'code': 'api_calls', 'name': 'API calls',
                                              'aggregation': 'sum', 'field_name': 'calls'})
product = env['product.product'].create({'name': 'Bench plan', 'type': 'service', 'recurring_invoice': True})
plan = env['sale.subscription.plan'].create({'name': 'Bench', 'x_fc_service_id': service.id,
                                             'x_fc_plan_code': 'bench', 'x_fc_amount': 10, 'x_fc_product_id': product.id})
partner = env['res.partner'].create({'name': 'Bench client'})
for n in range(%(clients)s):
    env['sale.order'].create({'partner_id': partner.id, 'plan_id': plan.id, 'x_fc_service_id': service.id,
                              'x_fc_external_id': 'bench-sub-%%s' %% n, 'pricelist_id': service._fc_pricelist().id})
key = env['fusion.billing.api.key']._generate(service)
env.cr.commit()
result = {'key': key, 'service_id': service.id}
"""


def wait_for(url, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"Odoo did not answer on {url}")


def post(url, key, body):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    return status, time.monotonic() - started


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=8269)
    options = parser.parse_args()
    tag = uuid.uuid4().hex[:6]

    with odoo_args(options.pg, options.odoo_db) as args:
        prepare_database(options.pg, options.odoo_db, args)
        setup = run_shell(args, SETUP % {"tag": tag, "clients": options.clients}, "setup")[2]
        server = subprocess.Popen([odoo_command(), f"--workers={options.workers}", f"--http-port={options.port}",
                                   # One database given with -d and no --db-filter: Odoo serves it without
                                   # listing the server's databases on every request (see README, Deployment).
                                   "--http-interface=127.0.0.1",
                                   "--max-cron-threads=0", "--log-level=warn", "--limit-time-real=600"] + args,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{options.port}/api/billing/v1"
            wait_for(f"{base}/health")
            http = run_http(base, setup["key"], options)
        finally:
            server.terminate()
            server.wait(30)

    dsn = make_dsn(options.pg, dbname=options.odoo_db)
    verify(dsn, setup["service_id"], http["expected"])
    raw = run_raw(dsn, options, setup["service_id"])
    ratio = http["rate"] / raw["table"]
    print(f"HTTP  : {http['rate']:8.0f} events/s ({options.events} events + {http['replayed']} replayed, "
          f"{options.clients} clients, {options.workers} workers); latency p50 {http['p50'] * 1000:.0f} ms, "
          f"p95 {http['p95'] * 1000:.0f} ms per batch of 100")
    print(f"raw   : {raw['table']:8.0f} events/s (psycopg2 execute_values, same rows, into the event table)")
    print(f"ratio : {ratio:.2f} (target ≥ 0.25) {'OK' if ratio >= 0.25 else 'BELOW TARGET'}")
    print(f"floor : {raw['temp']:8.0f} events/s into a temporary copy (no foreign keys, no WAL); "
          f"ratio to it {http['rate'] / raw['temp']:.2f}")


def run_http(base, key, options):
    per_client = options.events // options.clients
    latencies, errors, expected, replays = [], [], {}, []
    lock = threading.Lock()

    def client(number):
        rng = random.Random(number)
        sent = []
        for start in range(0, per_client, 100):
            batch = [{"transaction_id": f"tx-{number}-{i}", "external_subscription_id": f"bench-sub-{number}",
                      "code": "api_calls", "properties": {"calls": rng.randint(1, 9)}}
                     for i in range(start, min(start + 100, per_client))]
            sent.append(batch)
            replay = [rng.choice(sent)] if rng.random() < 0.10 else []
            for body in [batch] + replay:
                status, seconds = post(f"{base}/events/batch", key, {"events": body})
                with lock:
                    latencies.append(seconds)
                    if status != 200:
                        errors.append(status)
            with lock:
                replays.extend(len(body) for body in replay)
        with lock:
            expected[f"bench-sub-{number}"] = sum(e["properties"]["calls"] for b in sent for e in b)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(options.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        sys.exit(f"{len(errors)} requests failed: {errors[:10]}")
    latencies.sort()
    return {"rate": (per_client * options.clients + sum(replays)) / elapsed, "p50": statistics.median(latencies),
            "p95": latencies[int(len(latencies) * 0.95) - 1], "expected": expected,
            "replayed": sum(replays)}


def run_raw(dsn, options, service_id):
    """events/s of raw ``execute_values`` inserting the same rows as the API stores (every column,
    same subscriptions and metric), one commit per 100, from one connection.

    ``table``: into the event table itself (same indexes, foreign keys, WAL and ``ON CONFLICT``;
    the rows are deleted afterwards) — the baseline of the ratio. ``temp``: into a temporary copy
    without foreign keys or WAL, the floor of what PostgreSQL alone can do, for reference.
    """
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("""SELECT s.company_id, o.x_fc_external_id, o.id, m.id FROM fusion_billing_service s
                            JOIN sale_order o ON o.x_fc_service_id = s.id
                            JOIN fusion_billing_metric m ON m.service_id = s.id WHERE s.id = %s""", [service_id])
        targets = cursor.fetchall()
        rows = [(service_id, targets[n % len(targets)][0], f"raw-{n}", targets[n % len(targets)][1], "api_calls",
                 json.dumps({"calls": 1}), uuid.uuid4().hex, targets[n % len(targets)][2], targets[n % len(targets)][3])
                for n in range(options.events)]
        cursor.execute("CREATE TEMP TABLE bench_events (LIKE fusion_billing_event INCLUDING ALL)")
        connection.commit()
        rates = {}
        for name, table in (("table", "fusion_billing_event"), ("temp", "bench_events")):
            started = time.monotonic()
            for start in range(0, len(rows), 100):
                execute_values(cursor, f"""
                    INSERT INTO {table} (service_id, company_id, transaction_id, external_subscription_id, code,
                                         properties, fingerprint, subscription_id, metric_id, timestamp, state,
                                         create_uid, create_date, write_uid, write_date) VALUES %s
                    ON CONFLICT (service_id, external_subscription_id, transaction_id) DO NOTHING RETURNING id""",
                    rows[start:start + 100],
                    template="(%s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 'processed', 1, now(), 1, now())")
                connection.commit()
            rates[name] = len(rows) / (time.monotonic() - started)
        cursor.execute("DELETE FROM fusion_billing_event WHERE service_id = %s AND transaction_id LIKE 'raw-%%'",
                       [service_id])
        return rates


def verify(dsn, service_id, expected):
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT external_subscription_id, count(*) FROM fusion_billing_event WHERE service_id = %s "
                       "GROUP BY 1", [service_id])
        stored = dict(cursor.fetchall())
        cursor.execute("""SELECT o.x_fc_external_id, sum(u.quantity) FROM fusion_billing_usage u
                            JOIN sale_order o ON o.id = u.subscription_id
                           WHERE o.x_fc_service_id = %s GROUP BY 1""", [service_id])
        usage = {key: float(total) for key, total in cursor.fetchall()}
    sent_events = sum(stored.values())
    lost = {k: v for k, v in expected.items() if usage.get(k) != v}
    print(f"stored: {sent_events} events, usage totals {'match' if not lost else 'DIFFER'} "
          f"({sum(usage.values()):.0f} units) — lost/double-counted: {len(lost)} subscriptions")
    if lost:
        sys.exit(f"usage differs: {lost}")


if __name__ == "__main__":
    main()
