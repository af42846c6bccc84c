#!/usr/bin/env python3
"""Benchmark of event ingestion through the real HTTP server (issues #5 and #14).

Starts Odoo with ``--workers``, pushes ``--events`` events in batches of 100 from ``--clients``
concurrent clients, then, in the same run, inserts the same rows with raw psycopg2
``execute_values`` into the event table itself (the baseline; a temporary copy without foreign
keys or WAL is also timed, for reference). Prints events/s of both and their ratio, p50/p95
latency per batch, the answers by status, and checks the stored totals: every unique event
stored once and the usage equal to the sum over the unique events (0 lost, 0 double-counted),
both as readers see it (usage rows plus unfolded deltas) and after the fold.

Modes:
    default       each client its own subscription; 10 % of batches are replays of one of the
                  client's earlier batches (target ratio ≥ 0.25)
    --contention  16 clients on 8 subscriptions (two clients per subscription and metric); in
                  every batch 10 % of the events are the ones the other client of the same
                  subscription sends in its own batch at the same moment (cross-client replays of
                  one transaction id, as apps retrying after a timeout). Targets: ratio ≥ 0.40,
                  p95 < 1 s per batch, 0 lost, 0 double-counted, 0 non-retryable errors.

A 503 (Odoo's replays of a conflict ran out) is retried after its Retry-After, as a client
would, and counted; any other non-200 answer is a failure.

    python3 benchmarks/events_ingest.py --pg "host=127.0.0.1 port=5432 user=odoo" [--contention] [--odoo-db bench]

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
from collections import Counter

from harness import argument_parser, odoo_args, odoo_command, prepare_database, run_shell  # first: Odoo's interpreter

import psycopg2
from psycopg2.extensions import make_dsn
from psycopg2.extras import execute_values

BATCH = 100
SETUP = """
service = env['fusion.billing.service'].create({'name': 'Bench %(tag)s', 'code': 'bench_%(tag)s'})
metric = env['fusion.billing.metric'].create({'service_id': service.id, 'code': 'api_calls', 'name': 'API calls',
                                              'aggregation': 'sum', 'field_name': 'calls'})
product = env['product.product'].create({'name': 'Bench plan', 'type': 'service', 'recurring_invoice': True})
plan = env['sale.subscription.plan'].create({'name': 'Bench', 'x_fc_service_id': service.id,
                                             'x_fc_plan_code': 'bench', 'x_fc_amount': 10, 'x_fc_product_id': product.id})
# An included quota each subscription crosses during the run (the usage_threshold_reached signal is checked).
env['fusion.billing.charge'].create({'service_id': service.id, 'plan_id': plan.id, 'metric_id': metric.id,
                                     'included_quantity': 2000, 'charge_model': 'standard',
                                     'properties': {'amount': '0.01'}})
partner = env['res.partner'].create({'name': 'Bench client'})
orders = env['sale.order']
for n in range(%(subscriptions)s):
    orders |= env['sale.order'].create({'partner_id': partner.id, 'plan_id': plan.id, 'x_fc_service_id': service.id,
                                        'x_fc_external_id': 'bench-sub-%%s' %% n, 'pricelist_id': service._fc_pricelist().id})
key = env['fusion.billing.api.key']._generate(service)
env.cr.commit()
result = {'key': key, 'service_id': service.id, 'orders': orders.ids}
"""
FOLD = """
if hasattr(env['fusion.billing.usage'], '_fc_fold'):  # (absent before the usage deltas: to measure old code)
    env['fusion.billing.usage']._fc_fold(%(orders)s)
    env.cr.commit()
result = {}
"""


def wait_for(url, seconds=180):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"Odoo did not answer on {url}")


def post(url, key, body):
    """POST until answered for good: a 503 is retried after its Retry-After. Returns
    (final status, seconds from first send to final answer, statuses seen)."""
    data = json.dumps(body).encode()
    started, statuses = time.monotonic(), []
    while True:
        request = urllib.request.Request(url, data=data, method="POST", headers={
            "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        retry_after = None
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
                status = response.status
        except urllib.error.HTTPError as error:
            status, retry_after = error.code, error.headers.get("Retry-After")
        statuses.append(status)
        if status != 503 or len(statuses) > 10:
            return status, time.monotonic() - started, statuses
        time.sleep(float(retry_after or 1))


def calls(transaction_id):
    """The units of an event: a function of its id, so a replay is byte-for-byte identical."""
    return sum(transaction_id.encode()) % 9 + 1


def event(transaction_id, subscription, timestamp):
    return {"transaction_id": transaction_id, "external_subscription_id": subscription, "code": "api_calls",
            "timestamp": timestamp, "properties": {"calls": calls(transaction_id)}}


def plan_default(options, timestamp):
    """Each client its own subscription; 10 % of batches resent (a replay of an earlier one)."""
    plans = []
    per_client = options.events // options.clients
    for number in range(options.clients):
        rng, sent, requests = random.Random(number), [], []
        subscription = f"bench-sub-{number}"
        for start in range(0, per_client, BATCH):
            batch = [event(f"tx-{number}-{i}", subscription, timestamp) for i in range(start, min(start + BATCH, per_client))]
            sent.append(batch)
            requests.append(batch)
            if rng.random() < 0.10:
                requests.append(rng.choice(sent))
        plans.append(requests)
    return plans


def plan_contention(options, timestamp):
    """Clients 2k and 2k+1 share subscription k. Batch b of a client: 90 events of its own plus the
    first 10 of its partner's batch b, which the partner sends at about the same moment."""
    own_per_batch = BATCH - BATCH // 10
    batches = -(-options.events // (options.clients * own_per_batch))
    own = {number: [[f"tx-{number}-{b}-{i}" for i in range(own_per_batch)] for b in range(batches)]
           for number in range(options.clients)}
    plans = []
    for number in range(options.clients):
        subscription = f"bench-sub-{number // 2}"
        partner = number ^ 1
        plans.append([[event(tx, subscription, timestamp) for tx in own[number][b] + own[partner][b][:BATCH // 10]]
                      for b in range(batches)])
    return plans


def expected_of(plans):
    """{subscription: {transaction id: units}} over the unique events."""
    expected = {}
    for requests in plans:
        for batch in requests:
            for item in batch:
                expected.setdefault(item["external_subscription_id"], {})[item["transaction_id"]] = \
                    item["properties"]["calls"]
    return expected


def main():
    parser = argument_parser(__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--port", type=int, default=8269)
    parser.add_argument("--contention", action="store_true",
                        help="16 clients on 8 subscriptions, 10 %% cross-client replays (issue #14)")
    options = parser.parse_args()
    if options.contention:
        options.clients = 16
    subscriptions = options.clients // 2 if options.contention else options.clients
    tag = uuid.uuid4().hex[:6]
    timestamp = int(time.time()) - 600
    plans = (plan_contention if options.contention else plan_default)(options, timestamp)
    expected = expected_of(plans)

    with odoo_args(options.pg, options.odoo_db) as args:
        prepare_database(options.pg, options.odoo_db, args)
        setup = run_shell(args, SETUP % {"tag": tag, "subscriptions": subscriptions}, "setup")[2]
        dsn = make_dsn(options.pg, dbname=options.odoo_db)
        events_sent = sum(len(batch) for requests in plans for batch in requests)
        raw_before = run_raw(dsn, events_sent, setup["service_id"])  # the baseline, before and after the HTTP run
        server = subprocess.Popen([odoo_command(), f"--workers={options.workers}", f"--http-port={options.port}",
                                   # One database given with -d and no --db-filter: Odoo serves it without
                                   # listing the server's databases on every request (see README, Deployment).
                                   "--http-interface=127.0.0.1", f"--gevent-port={options.port + 1}",
                                   "--max-cron-threads=0", "--log-level=info", "--limit-time-real=600"] + args,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        log = []
        reader = threading.Thread(target=lambda: log.extend(server.stdout), daemon=True)
        reader.start()
        try:
            base = f"http://127.0.0.1:{options.port}/api/billing/v1"
            wait_for(f"{base}/health")
            http = run_http(base, setup["key"], plans)
        finally:
            server.terminate()
            server.wait(30)
        raw_after = run_raw(dsn, events_sent, setup["service_id"])
        live = verify(dsn, setup["service_id"], expected, "readers (rows + deltas)")
        run_shell(args, FOLD % {"orders": setup["orders"]}, "fold")
        folded = verify(dsn, setup["service_id"], expected, "after the fold")

    # The machine is shared: the baseline is the mean of a run just before and one just after.
    raw = {key: (raw_before[key] + raw_after[key]) / 2 for key in raw_before}
    ratio = http["rate"] / raw["table"]
    target = 0.40 if options.contention else 0.25
    conflicts = sum("SERIALIZATION_FAILURE" in line or "DEADLOCK_DETECTED" in line or "ConcurrencyError" in line
                    for line in log)
    # Odoo's access log: "POST /…/events/batch HTTP/1.1" <status> - <queries> <SQL s> <other s>
    served = [line.split()[-3:] for line in log if "/events/batch HTTP" in line]
    served = [(int(q), float(sql), float(other)) for q, sql, other in served if q.isdigit()]
    mode = (f"contention: {options.clients} clients on {subscriptions} subscriptions, 10 % cross-client replays"
            if options.contention else f"{options.clients} clients on {subscriptions} subscriptions, 10 % replayed batches")
    print(f"\nmode  : {mode}, {options.workers} workers")
    print(f"HTTP  : {http['rate']:8.0f} events/s ({http['events_sent']} events sent, {http['unique']} unique, "
          f"{http['requests']} batches); latency per batch p50 {http['p50'] * 1000:.0f} ms, p95 {http['p95'] * 1000:.0f} ms,"
          f" max {http['max'] * 1000:.0f} ms")
    print(f"answers: {dict(sorted(http['statuses'].items()))} (every answer, retries included); "
          f"conflicts Odoo replayed (server log): {conflicts}")
    if served:
        print(f"server: per batch {statistics.mean(q for q, _s, _o in served):.1f} queries, "
              f"{statistics.mean(sql for _q, sql, _o in served) * 1000:.1f} ms in SQL, "
              f"{statistics.mean(other for _q, _s, other in served) * 1000:.1f} ms in Python (mean of {len(served)})")
    print(f"raw   : {raw['table']:8.0f} events/s (psycopg2 execute_values, same rows, into the event table; "
          f"{raw_before['table']:.0f} before and {raw_after['table']:.0f} after the HTTP run)")
    print(f"ratio : {ratio:.2f} (target ≥ {target:.2f}) {'OK' if ratio >= target else 'BELOW TARGET'}; "
          f"p95 {'OK' if http['p95'] < 1 else 'ABOVE'} (target < 1 s)")
    print(f"floor : {raw['temp']:8.0f} events/s into a temporary copy (no foreign keys, no WAL); "
          f"ratio to it {http['rate'] / raw['temp']:.2f}")
    failed = http["failed"] or live["lost"] or live["double"] or folded["lost"] or folded["double"]
    print(f"result: lost {folded['lost']} events, double-counted {folded['double']}, "
          f"non-retryable errors {len(http['failed'])} — {'FAILED' if failed else 'OK'}")
    if failed:
        sys.exit(1)


def run_http(base, key, plans):
    latencies, statuses, failed, lock = [], Counter(), [], threading.Lock()

    def client(requests):
        for batch in requests:
            status, seconds, seen = post(f"{base}/events/batch", key, {"events": batch})
            with lock:
                latencies.append(seconds)
                statuses.update(seen)
                if status != 200:
                    failed.append(status)

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(requests,)) for requests in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    sent = sum(len(batch) for requests in plans for batch in requests)
    latencies.sort()
    return {"rate": sent / elapsed, "p50": statistics.median(latencies), "p95": latencies[int(len(latencies) * 0.95) - 1],
            "max": latencies[-1], "statuses": statuses, "failed": failed, "events_sent": sent,
            "unique": len({(item["external_subscription_id"], item["transaction_id"])
                           for requests in plans for batch in requests for item in batch}),
            "requests": sum(len(requests) for requests in plans)}


def run_raw(dsn, count, service_id):
    """events/s of raw ``execute_values`` inserting as many rows as the API was sent, with every
    column the API stores (same subscriptions and metric), one commit per 100, from one connection.

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
                for n in range(count)]
        cursor.execute("CREATE TEMP TABLE IF NOT EXISTS bench_events (LIKE fusion_billing_event INCLUDING ALL)")
        connection.commit()
        rates = {}
        for name, table in (("table", "fusion_billing_event"), ("temp", "bench_events")):
            started = time.monotonic()
            for start in range(0, len(rows), BATCH):
                execute_values(cursor, f"""
                    INSERT INTO {table} (service_id, company_id, transaction_id, external_subscription_id, code,
                                         properties, fingerprint, subscription_id, metric_id, timestamp, state,
                                         create_uid, create_date, write_uid, write_date) VALUES %s
                    ON CONFLICT (service_id, external_subscription_id, transaction_id) DO NOTHING RETURNING id""",
                    rows[start:start + BATCH],
                    template="(%s, %s, %s, %s, %s, %s, %s, %s, %s, now(), 'processed', 1, now(), 1, now())")
                connection.commit()
            rates[name] = len(rows) / (time.monotonic() - started)
        cursor.execute("DELETE FROM fusion_billing_event WHERE service_id = %s AND transaction_id LIKE 'raw-%%'",
                       [service_id])
        return rates


def verify(dsn, service_id, expected, label):
    """Stored events against the unique ids sent; usage (rows, plus deltas not folded yet) against the sum."""
    with psycopg2.connect(dsn) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('fusion_billing_usage_delta') IS NOT NULL")
        deltas = "(SELECT sum(d.quantity) FROM fusion_billing_usage_delta d WHERE d.subscription_id = o.id)" \
            if cursor.fetchone()[0] else "0"
        cursor.execute("SELECT external_subscription_id, transaction_id FROM fusion_billing_event WHERE service_id = %s",
                       [service_id])
        stored = {}
        for subscription, transaction_id in cursor.fetchall():
            stored.setdefault(subscription, []).append(transaction_id)
        cursor.execute(f"""
            SELECT o.x_fc_external_id, COALESCE(sum(u.quantity), 0) + COALESCE({deltas}, 0)
              FROM sale_order o LEFT JOIN fusion_billing_usage u ON u.subscription_id = o.id
             WHERE o.x_fc_service_id = %s GROUP BY o.id, o.x_fc_external_id""", [service_id])
        usage = {subscription: float(total) for subscription, total in cursor.fetchall()}
    lost = sum(len(set(ids) - set(stored.get(subscription, ()))) for subscription, ids in expected.items())
    duplicates = sum(len(ids) - len(set(ids)) for ids in stored.values())
    units_expected = sum(sum(ids.values()) for ids in expected.values())
    units_counted = sum(usage.get(subscription, 0) for subscription in expected)
    print(f"stored: {sum(len(ids) for ids in stored.values())} events for {sum(len(ids) for ids in expected.values())} "
          f"unique ({lost} missing, {duplicates} twice); usage {label}: {units_counted:.0f} units for "
          f"{units_expected} expected")
    # An event lost or counted twice shows in the ids or in the units (each event counts 1 to 9).
    return {"lost": lost + (units_counted < units_expected), "double": duplicates + (units_counted > units_expected)}


if __name__ == "__main__":
    main()
