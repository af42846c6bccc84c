"""The API under production conditions: a real multi-process Odoo server (``--workers 2``) on the
test database, driven by concurrent HTTP clients. Each request runs in its own worker process and
transaction, and Odoo replays a request whose transaction hit a serialization failure, which
``HttpCase`` (one request at a time on the test's cursor) can never show.
"""
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

from odoo import Command, fields
from odoo.tests import TransactionCase, tagged

from .common import OdooServer, real_session

CLIENTS = 8
ROUNDS = 12
BATCH = 50
STEP = 40  # consecutive windows share 10 transaction ids: clients replay each other's events at once


def event(index, subscription, timestamp):
    """The event of transaction id ``index``: always the same payload, so a resend is an exact replay."""
    return {"transaction_id": f"tx-{index}", "external_subscription_id": subscription, "code": "calls",
            "timestamp": timestamp + index % 600, "properties": {"n": index % 9 + 1}}


@tagged("post_install", "-at_install")
class TestApiUnderRealWorkers(TransactionCase):
    """Everything the server must see is committed in real sessions and removed afterwards; the
    test's own transaction writes nothing (the server could not see it, and its locks would block
    the server's workers)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tag = uuid.uuid4().hex[:8]
        cls.subscription_ref, cls.other_ref = f"conc-sub-{tag}", f"conc-other-{tag}"
        with real_session(cls.env) as env:
            cad = env.ref("base.CAD")
            service = env["fusion.billing.service"].create({
                "name": f"Concurrency {tag}", "code": f"conc_{tag}", "currency_id": cad.id})
            metric = env["fusion.billing.metric"].create({
                "service_id": service.id, "name": "Calls", "code": "calls", "aggregation": "sum", "field_name": "n"})
            product = env["product.product"].create({"name": f"Concurrency plan {tag}", "type": "service",
                                                     "list_price": 10.0, "recurring_invoice": True})
            plan = env["sale.subscription.plan"].create({
                "name": f"Concurrency {tag}", "billing_period_value": 1, "billing_period_unit": "month",
                "x_fc_service_id": service.id, "x_fc_plan_code": "conc", "x_fc_amount": 10.0,
                "x_fc_currency_id": cad.id, "x_fc_product_id": product.id})
            env["fusion.billing.charge"].create({
                "service_id": service.id, "plan_id": plan.id, "plan_code": "conc", "metric_id": metric.id,
                "included_quantity": 0, "charge_model": "standard", "properties": {"amount": "0.01"}})
            partner = env["res.partner"].create({"name": f"Concurrency client {tag}"})
            link = env["fusion.billing.account.link"].create({
                "service_id": service.id, "external_id": f"conc-cus-{tag}", "partner_id": partner.id})
            today = fields.Date.context_today(env["sale.order"])
            order, _other = env["sale.order"].create([{
                "partner_id": partner.id, "pricelist_id": service._fc_pricelist().id, "plan_id": plan.id,
                "x_fc_service_id": service.id, "x_fc_account_link_id": link.id,
                "x_fc_external_id": ref, "start_date": today.replace(day=1),
                "order_line": [Command.create({"product_id": product.id, "price_unit": 10.0})],
            } for ref in (cls.subscription_ref, cls.other_ref)])
            cls.key = env["fusion.billing.api.key"]._generate(service)
            cls.service_id, cls.order_id, cls.customer_ref = service.id, order.id, link.external_id
        cls.addClassCleanup(cls._remove_committed_data)
        cls.server = OdooServer(cls.env, workers=2)
        cls.server.__enter__()
        cls.addClassCleanup(cls.server.__exit__, None, None, None)
        cls.api = f"{cls.server.url}/api/billing/v1"
        cls.headers = {"Authorization": f"Bearer {cls.key}", "Content-Type": "application/json"}

    @classmethod
    def _remove_committed_data(cls):
        with real_session(cls.env) as env:
            cr = env.cr
            orders = "(SELECT id FROM sale_order WHERE x_fc_service_id = %s)"
            cr.execute("SELECT to_regclass('fusion_billing_usage_delta')")
            if cr.fetchone()[0]:
                cr.execute(f"DELETE FROM fusion_billing_usage_delta WHERE subscription_id IN {orders}", [cls.service_id])
            cr.execute(f"DELETE FROM fusion_billing_usage WHERE subscription_id IN {orders}", [cls.service_id])
            for table in ("fusion_billing_event", "fusion_billing_webhook", "fusion_billing_reconciliation"):
                cr.execute(f"DELETE FROM {table} WHERE service_id = %s", [cls.service_id])  # noqa: S608 (fixed names)
            cr.execute("DELETE FROM sale_order WHERE x_fc_service_id = %s", [cls.service_id])
            cr.execute("DELETE FROM fusion_billing_account_link WHERE service_id = %s", [cls.service_id])
            env["fusion.billing.service"].browse(cls.service_id).active = False

    # ------------------------------------------------------------------ helpers
    def post(self, path, body, session=None):
        """POST until answered for good: a 503 (Odoo's retries ran out) is retried after its Retry-After,
        as the Lago clients' callers do. Returns (final response, statuses seen)."""
        statuses = []
        for _attempt in range(10):
            response = (session or requests).post(f"{self.api}/{path}", json=body, headers=self.headers, timeout=120)
            statuses.append(response.status_code)
            if response.status_code != 503:
                return response, statuses
            self.assertEqual(response.json()["status"], 503)
            self.assertTrue(response.headers.get("Retry-After"), "a 503 says when to retry")
            time.sleep(min(float(response.headers["Retry-After"]), 5))
        return response, statuses

    def server_failure(self):
        return "\nserver log (tail):\n" + self.server.log()[-4000:]

    # ------------------------------------------------------------------ tests
    def test_concurrent_batches_with_overlapping_transaction_ids(self):
        """8 clients, one subscription and one metric, batches whose transaction ids overlap with
        the batches other clients send at the same moment: every answer is 200 (a 503 only when
        Odoo's retries ran out, then the retry answers 200); every unique event is stored once and
        the usage equals the sum over the unique ids."""
        timestamp = int(time.time()) - 3600
        sent, answers, lock = set(), [], threading.Lock()

        def client(number):
            with requests.Session() as session:
                for round_ in range(ROUNDS):
                    start = (round_ * CLIENTS + number) * STEP
                    indexes = range(start, start + BATCH)
                    body = {"events": [event(i, self.subscription_ref, timestamp) for i in indexes]}
                    response, statuses = self.post("events/batch", body, session)
                    with lock:
                        answers.append((statuses, response.status_code, response.text[:300]))
                        if response.status_code == 200:
                            sent.update(indexes)

        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS)))

        failed = [answer for answer in answers if answer[1] != 200]
        self.assertFalse(failed, f"{len(failed)} of {len(answers)} batches not accepted: {failed[:3]}"
                         + self.server_failure())
        self.assertTrue(all(set(statuses) <= {200, 503} for statuses, *_ in answers), answers)
        expected_ids = set(range(ROUNDS * CLIENTS * STEP + BATCH - STEP))
        self.assertEqual(sent, expected_ids)
        self._assert_stored_exactly_once(expected_ids)
        expected_units = sum(i % 9 + 1 for i in expected_ids)
        usage = requests.get(f"{self.api}/customers/{self.customer_ref}/current_usage", headers=self.headers,
                             params={"external_subscription_id": self.subscription_ref}, timeout=60)
        self.assertEqual(usage.status_code, 200, usage.text)
        charge = usage.json()["customer_usage"]["charges_usage"][0]
        self.assertEqual((charge["units"], charge["events_count"]), (str(expected_units), len(expected_ids)))
        self._assert_folded_usage(expected_units, len(expected_ids))

    def test_concurrent_identical_events(self):
        """The same event sent by 8 clients at once (an app retrying after a timeout): all 200 with
        the one stored event."""
        body = {"event": event(10**6, self.other_ref, int(time.time()) - 60)}
        barrier = threading.Barrier(CLIENTS)

        def send(_number):
            barrier.wait(30)
            return self.post("events", body)

        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(send, range(CLIENTS)))
        self.assertEqual([r.status_code for r, _s in results], [200] * CLIENTS,
                         [r.text[:200] for r, _s in results] + [self.server_failure()])
        self.assertEqual(len({r.json()["event"]["lago_id"] for r, _s in results}), 1)
        with real_session(self.env) as env:
            env.cr.execute("SELECT count(*) FROM fusion_billing_event WHERE service_id = %s AND transaction_id = %s",
                           [self.service_id, f"tx-{10**6}"])
            self.assertEqual(env.cr.fetchone()[0], 1)

    def test_concurrent_first_creation(self):
        """Two simultaneous POST /customers (and POST /subscriptions) with the same new external id
        both answer 200 with the same object."""
        cases = []
        for attempt in range(3):
            cases.append(("customers", {"customer": {"external_id": f"first-cus-{attempt}", "name": "First"}},
                          "customer"))
            cases.append(("subscriptions", {"subscription": {
                "external_customer_id": f"first-sub-cus-{attempt}", "plan_code": "conc",
                "external_id": f"first-sub-{attempt}"}}, "subscription"))
        for path, body, root in cases:
            barrier = threading.Barrier(2)

            def send(_number, path=path, body=body, barrier=barrier):
                barrier.wait(30)
                return self.post(path, body)

            with ThreadPoolExecutor(2) as pool:
                results = [response for response, _statuses in pool.map(send, range(2))]
            self.assertEqual([r.status_code for r in results], [200, 200],
                             [r.text[:300] for r in results] + [self.server_failure()])
            self.assertEqual(results[0].json()[root]["lago_id"], results[1].json()[root]["lago_id"], path)
            self.assertEqual(results[0].json()[root]["external_id"], body[root]["external_id"])

    def test_concurrent_first_app_bill_report(self):
        """Two simultaneous POST /reconciliation/app_bills for the same new row (an app retrying
        after a timeout) both answer 200; one row holds the report."""
        for attempt in range(3):
            bill = {"external_subscription_id": f"bill-sub-{attempt}", "period_start": "2026-10-01",
                    "period_end": "2026-11-01", "base_fee_cents": 4900 + attempt}
            barrier = threading.Barrier(2)

            def send(_number, bill=bill, barrier=barrier):
                barrier.wait(30)
                return self.post("reconciliation/app_bills", {"app_bills": [bill]})

            with ThreadPoolExecutor(2) as pool:
                results = [response for response, _statuses in pool.map(send, range(2))]
            self.assertEqual([r.status_code for r in results], [200, 200],
                             [r.text[:300] for r in results] + [self.server_failure()])
            with real_session(self.env) as env:
                env.cr.execute("""SELECT app_reported->>'base_fee_cents' FROM fusion_billing_reconciliation
                                   WHERE service_id = %s AND external_subscription_id = %s""",
                               [self.service_id, bill["external_subscription_id"]])
                self.assertEqual(env.cr.fetchall(), [(str(4900 + attempt),)])

    # ------------------------------------------------------------------ assertions
    def _assert_stored_exactly_once(self, expected_ids):
        with real_session(self.env) as env:
            env.cr.execute("""SELECT transaction_id, count(*) FROM fusion_billing_event
                               WHERE service_id = %s AND external_subscription_id = %s GROUP BY 1""",
                           [self.service_id, self.subscription_ref])
            stored = dict(env.cr.fetchall())
        self.assertEqual(set(stored), {f"tx-{i}" for i in expected_ids}, "every unique event stored")
        self.assertEqual(set(stored.values()), {1}, "and stored once")

    def _assert_folded_usage(self, units, count):
        """After the period close's fold, the usage row itself is exact."""
        with real_session(self.env) as env:
            env["fusion.billing.usage"]._fc_fold([self.order_id])
        with real_session(self.env) as env:
            env.cr.execute("""SELECT quantity, events_count FROM fusion_billing_usage u
                                JOIN fusion_billing_metric m ON m.id = u.metric_id
                               WHERE u.subscription_id = %s AND m.code = 'calls' AND u.state = 'open'""",
                           [self.order_id])
            self.assertEqual([(float(q), n) for q, n in env.cr.fetchall()], [(float(units), count)])
