import json
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest.mock import patch

from psycopg2.errors import SerializationFailure

from odoo import fields
from odoo.exceptions import AccessError, ValidationError
from odoo.tests import HttpCase, JsonRpcException, TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from ..core import lago, outbound, signing
from ..services import webhook_delivery
from .common import FusionBillingCase, FusionBillingFixtures, real_cursor, real_session, run_as_workers

SECRET = "whsec_test"
LOOPBACK_PARAM = "fusion_billing.webhook_allow_loopback"  # tests only: lets webhooks reach 127.0.0.1
PUBLIC_IP = "93.184.215.14"


class Receiver:
    """A loopback app endpoint that verifies signatures and can fail, hang or misbehave on purpose.

    ``mode``: ``ok`` (204), ``stuck`` (holds each request until ``release`` is set), ``endless``
    (answers 500 with a body that never ends), ``drip`` (sends its status line a byte at a time).
    """

    def __init__(self, mode="ok"):
        self.mode = mode
        self.received = []          # (unique key, webhook_type, object ref)
        self.fail_next = 0          # answer 500 to the next N requests
        self.bad_signatures = 0
        self.requests = 0           # every request that reached the receiver
        self.waiting = 0            # requests a stuck receiver holds right now
        self.release = threading.Event()
        self.stop = threading.Event()
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.changed:
                    receiver.requests += 1
                if not signing.verify(SECRET, body, self.headers.get("X-Lago-Signature")):
                    receiver.bad_signatures += 1
                if receiver.mode != "ok":
                    return getattr(self, f"misbehave_{receiver.mode}")()
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                payload = json.loads(body)
                with receiver.changed:
                    receiver.received.append((self.headers["X-Lago-Unique-Key"], payload["webhook_type"],
                                              payload[payload["object_type"]].get("external_id")))
                    receiver.changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def misbehave_stuck(self):
                with receiver.changed:
                    receiver.waiting += 1
                receiver.release.wait(60)
                with receiver.changed:
                    receiver.waiting -= 1
                self.send_response(204)
                self.end_headers()

            def misbehave_endless(self):
                self.send_response(500)
                self.end_headers()
                try:
                    while not receiver.stop.is_set():
                        self.wfile.write(b"<secret internal page> " * 400)
                except OSError:
                    pass  # the client stopped reading: what it should do

            def misbehave_drip(self):
                try:
                    for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 10_000:
                        if receiver.stop.wait(0.2):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks"

    def wait_for(self, count, timeout):
        """Whether ``count`` webhooks were received within ``timeout`` seconds (a guard, not a measure)."""
        with self.changed:
            return self.changed.wait_for(lambda: len(self.received) >= count, timeout)

    @contextmanager
    def running(self):
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.release.set()
            self.stop.set()
            self.server.shutdown()


@tagged("post_install", "-at_install")
class TestWebhooks(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env["ir.config_parameter"].set_param(LOOPBACK_PARAM, "1")
        cls.receiver = Receiver()
        cls.addClassCleanup(cls.receiver.server.server_close)
        cls.service.write({"billing_mode": "live", "webhook_url": cls.receiver.url, "webhook_secret": SECRET})

    def setUp(self):
        super().setUp()
        self.receiver.received.clear()
        self.receiver.fail_next = self.receiver.bad_signatures = self.receiver.requests = 0

    def _customer(self, external_id, **values):
        return self.env["fusion.billing.account.link"]._api_upsert(self.service, dict(external_id=external_id, **values))

    def _queue(self):
        return self.env["fusion.billing.webhook"].search([("service_id", "=", self.service.id)], order="id")

    def _deliver_at(self, when):
        with patch.object(fields.Datetime, "now", return_value=when), mute_logger(__name__):
            self.env["fusion.billing.webhook"]._cron_deliver()

    def test_enqueued_with_the_change_and_signed(self):
        with self.receiver.running():
            self._customer("cus_1", name="Maple")
            webhook = self._queue()
            self.assertEqual((webhook.event_type, webhook.state), ("customer.created", "pending"))
            body = json.loads(webhook.payload)
            self.assertEqual((body["object_type"], body["organization_id"], body["customer"]["external_id"]),
                             ("customer", self.service.organization_id, "cus_1"))
            self.env["fusion.billing.webhook"]._cron_deliver()
        self.assertEqual(webhook.state, "sent")
        self.assertEqual(self.receiver.received, [(webhook.unique_key, "customer.created", "cus_1")])
        self.assertEqual(self.receiver.bad_signatures, 0)

    def test_rollback_enqueues_nothing(self):
        with self.assertRaises(ZeroDivisionError), self.env.cr.savepoint():
            self._customer("cus_rolled_back")
            1 / 0  # noqa: B018
        self.assertFalse(self._queue())

    def test_outage_retries_in_order_and_loses_nothing(self):
        self._customer("cus_a")
        self._customer("cus_a", phone="1")          # same object: must arrive after the first
        self._customer("cus_b")
        now = fields.Datetime.now()  # after queuing: the rows are due now (not a second later)
        # Receiver down (nothing listening) for a while, then failing, then back.
        self.receiver.server.server_close()
        self.receiver = Receiver()
        self.service.webhook_url = "http://127.0.0.1:9/down"  # discard port: connection refused
        queue = self._queue()
        self._deliver_at(now)
        self.assertEqual(set(queue.mapped("state")), {"retrying", "pending"})
        self.assertEqual(queue[1].attempts, 0, "held back behind the older event of the same customer")
        self.service.webhook_url = self.receiver.url
        self.receiver.fail_next = 1
        with self.receiver.running():
            for minutes in (1, 3, 10, 30, 60, 120):
                self._deliver_at(now + timedelta(minutes=minutes))
        self.assertEqual(set(queue.mapped("state")), {"sent"})
        keys = [key for key, _type, _ref in self.receiver.received]
        self.assertEqual(sorted(keys), sorted(queue.mapped("unique_key")), "each exactly once")
        a_keys = [key for key, _type, ref in self.receiver.received if ref == "cus_a"]
        self.assertEqual(a_keys, queue.filtered(lambda w: "cus_a" in w.payload).mapped("unique_key"))

    def test_gives_up_after_max_attempts_and_can_be_resent(self):
        self._customer("cus_f")
        webhook = self._queue()
        webhook.write({"attempts": signing.MAX_ATTEMPTS - 1, "state": "retrying"})
        self.service.webhook_url = "http://127.0.0.1:9/down"
        self._deliver_at(fields.Datetime.now())
        self.assertEqual(webhook.state, "failed")
        self.assertTrue(webhook.activity_ids, "the billing team gets an activity")
        self.service.webhook_url = self.receiver.url
        webhook.action_resend()
        with self.receiver.running():
            self.env["fusion.billing.webhook"]._cron_deliver()
        self.assertEqual(webhook.state, "sent")
        self.assertEqual(self.receiver.received[0][0], webhook.unique_key)

    def test_shadow_and_unsubscribed_types_send_nothing(self):
        self.service.billing_mode = "shadow"
        self._customer("cus_s")
        self.assertEqual(self._queue().state, "shadow")
        self.service.write({"billing_mode": "live", "webhook_event_types": "invoice.created"})
        self._customer("cus_t")
        self.assertEqual(len(self._queue()), 1)

    def test_other_services_never_get_this_customer(self):
        desk = self._create_service("NexaDesk", "nexadesk", webhook_url=self.receiver.url, billing_mode="live")
        self._customer("cus_x")
        self.assertFalse(self.env["fusion.billing.webhook"].search([("service_id", "=", desk.id)]))

    def test_quota_used_up_signal_and_events_errors_digest(self):
        link = self._customer("cus_q")
        order = self._create_subscription(partner=link.partner_id, external_id="sub_q", start_date="2026-11-01",
                                          x_fc_account_link_id=link.id)
        event = {"external_subscription_id": "sub_q", "code": "bandwidth_gb", "properties": {"gb": 60},
                 "timestamp": fields.Datetime.to_datetime("2026-11-05 10:00:00"),
                 "precise_total_amount_cents": None}
        ingest = self.env["fusion.billing.event"]._ingest
        for tx in ("q1", "q2", "q3"):  # 60, 120 (crosses the 100 included), 180
            ingest(self.service, [dict(event, transaction_id=tx, fingerprint=tx,
                                       timestamp=event["timestamp"].replace(tzinfo=timezone.utc))])
        reached = self._queue().filtered(lambda w: w.event_type == "subscription.usage_threshold_reached")
        self.assertEqual(len(reached), 1)
        self.assertEqual(json.loads(reached.payload)["subscription"]["usage_threshold"]["units"], "120.0")
        ingest(self.service, [dict(event, transaction_id="bad", fingerprint="bad", code="nope",
                                   timestamp=event["timestamp"].replace(tzinfo=timezone.utc))])
        with patch.object(fields.Datetime, "now", return_value=fields.Datetime.now() + timedelta(minutes=2)):
            self.env["fusion.billing.webhook"]._cron_events_errors()  # the next hourly run
        digest = self._queue().filtered(lambda w: w.event_type == "events.errors")
        self.assertEqual(json.loads(digest.payload)["events_errors"]["invalid_code"], ["bad"])
        self.env["fusion.billing.usage"]._fc_fold(order.ids)  # events add deltas; the close folds them first
        self.assertEqual(order.x_fc_usage_ids.quantity, 180)

    # ------------------------------------------------------------------ signing key and URL checks
    def test_no_signing_secret_no_delivery(self):
        self.service.webhook_secret = False
        self.assertIn("secret", self.service.webhook_blocked_reason)
        self._customer("cus_nosecret")
        with self.receiver.running():
            self.env["fusion.billing.webhook"]._cron_deliver()
        self.assertEqual(self.receiver.requests, 0, "nothing is sent signed with an empty key")
        self.assertEqual(self._queue().state, "pending", "kept until a secret is set")
        self.service.webhook_secret = SECRET
        self.assertFalse(self.service.webhook_blocked_reason)
        with self.receiver.running():
            self.env["fusion.billing.webhook"]._cron_deliver()
        self.assertEqual(self._queue().state, "sent")

    def test_webhook_url_checks_at_save(self):
        service = self.service.with_user(self.billing_admin)
        resolved = {"metadata.google.internal": ["169.254.169.254"], "intranet.nexa.example": ["10.20.0.5"],
                    "rebound.example": [PUBLIC_IP, "127.0.0.1"], "hooks.nexadesk.example": [PUBLIC_IP],
                    "localhost": ["127.0.0.1", "::1"]}
        refused = [
            "http://hooks.nexadesk.example/billing",        # http: only https
            "https://169.254.169.254/latest/meta-data/",   # cloud metadata
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://10.0.0.7/hook", "https://192.168.1.2/hook", "https://172.16.0.1/hook",  # private
            "https://[fe80::1]/hook", "https://[::ffff:127.0.0.1]/hook", "https://[fd00:ec2::254]/",
            "https://intranet.nexa.example/hook", "https://rebound.example/hook",  # private after DNS
            "ftp://hooks.nexadesk.example/", "https://user:pw@hooks.nexadesk.example/", "hooks.nexadesk.example",
        ]
        self.env["ir.config_parameter"].set_param(LOOPBACK_PARAM, False)
        refused += ["http://127.0.0.1:8069/", "https://localhost/hook", "http://[::1]/hook"]  # loopback: tests only
        with patch.object(outbound, "resolve", lambda host: resolved[host]):
            for url in refused:
                with self.assertRaises(ValidationError, msg=url):
                    service.write({"webhook_url": url})
            service.write({"webhook_url": "https://hooks.nexadesk.example/billing"})
        self.assertEqual(self.service.webhook_url, "https://hooks.nexadesk.example/billing")
        self.env["ir.config_parameter"].set_param(LOOPBACK_PARAM, "1")
        service.write({"webhook_url": self.receiver.url})  # loopback http, allowed for tests

    def test_webhook_url_checked_again_after_dns_at_send_time(self):
        with patch.object(outbound, "resolve", lambda host: [PUBLIC_IP]):
            self.service.webhook_url = "https://hooks.nexadesk.example/billing"
        self._customer("cus_rebind")
        with patch.object(outbound, "resolve", lambda host: ["10.1.2.3"]):  # DNS now points inside
            self.env["fusion.billing.webhook"]._cron_deliver()
        webhook = self._queue()
        self.assertEqual((webhook.state, webhook.attempts), ("retrying", 1))
        self.assertIn("10.1.2.3", webhook.last_error)

    def test_a_response_is_read_only_a_few_kib_and_within_the_timeout(self):
        for mode in ("endless", "drip"):
            receiver = Receiver(mode)
            self.addCleanup(receiver.server.server_close)
            self.service.webhook_url = receiver.url
            self._customer(f"cus_{mode}")
            webhook = self._queue()[-1]
            worker = threading.Thread(target=self.env["fusion.billing.webhook"]._cron_deliver)
            with receiver.running(), patch.object(webhook_delivery, "SEND_TIMEOUT_SECONDS", 2):
                worker.start()
                worker.join(20)  # a guard against a hang
                finished = not worker.is_alive()
            worker.join()
            self.assertTrue(finished, f"a receiver in '{mode}' mode held the delivery")
            self.assertEqual(webhook.state, "retrying", mode)
            self.assertLessEqual(len(webhook.last_error), 300, mode)
            self.assertNotIn("<secret internal page> " * 20, webhook.last_error)

    # ------------------------------------------------------------------ payment status
    def test_payment_status_webhooks_come_from_the_paid_and_unpaid_hooks(self):
        accountant = new_test_user(self.env, "fc_accountant_wh", groups="account.group_account_user")
        link = self._customer("cus_pay", email="pay@client.example")
        order = self._create_subscription(partner=link.partner_id, external_id="sub_pay",
                                          x_fc_account_link_id=link.id)
        order.action_confirm()
        invoice = order._create_invoices()
        invoice.with_user(accountant).action_post()

        def status_webhooks():
            rows = self._queue().filtered(lambda w: w.event_type == "invoice.payment_status_updated")
            return [json.loads(w.payload)["invoice"]["payment_status"] for w in rows]
        self.assertEqual(status_webhooks(), [])
        self.env["account.payment.register"].with_user(accountant).with_context(
            active_model="account.move", active_ids=invoice.ids).create({})._create_payments()
        self.assertIn(invoice.payment_state, ("paid", "in_payment"))
        self.assertEqual(status_webhooks(), ["succeeded"])
        invoice.line_ids.filtered(lambda l: l.account_type == "asset_receivable").with_user(
            accountant).remove_move_reconcile()
        self.assertEqual(invoice.payment_state, "not_paid")
        self.assertEqual(status_webhooks(), ["succeeded", "pending"])


@tagged("post_install", "-at_install")
class TestWebhookWorkers(FusionBillingCase):
    """Delivery by real workers (real database sessions, commits) on a committed queue."""

    def committed_services(self, *receivers, rows=1):
        """One live service per receiver with ``rows`` queued webhooks each, committed in a real
        session (as the apps' changes are) so that real workers see them; removed after the test."""
        with real_session(self.env) as env:
            env["ir.config_parameter"].set_param(LOOPBACK_PARAM, "1")
            services = env["fusion.billing.service"]
            for number, receiver in enumerate(receivers):
                service = env["fusion.billing.service"].create({
                    "name": f"Receiver {number}", "code": f"receiver_{number}", "billing_mode": "live",
                    "webhook_url": receiver.url, "webhook_secret": SECRET})
                for row in range(rows):
                    env["fusion.billing.webhook"]._enqueue(service, "customer.created",
                                                           obj={"external_id": f"cus_{number}_{row}"})
                services |= service
            service_ids = services.ids

        def cleanup():
            with real_session(self.env) as env:
                env["fusion.billing.webhook"].search([("service_id", "in", service_ids)]).unlink()
                env["fusion.billing.service"].browse(service_ids).unlink()
                env["ir.config_parameter"].search([("key", "=", LOOPBACK_PARAM)]).unlink()
        self.addCleanup(cleanup)
        return service_ids

    def committed_queue(self, service_ids):
        with real_session(self.env) as env:
            queue = env["fusion.billing.webhook"].search([("service_id", "in", service_ids)], order="id")
            return [(w.service_id.id, w.unique_key, w.state, w.attempts, w.last_error) for w in queue]

    def test_two_workers_never_send_the_same_row_twice(self):
        """Two real database sessions (as two Odoo workers) deliver one committed queue concurrently."""
        receiver = Receiver()
        self.addCleanup(receiver.server.server_close)
        service_ids = self.committed_services(receiver, rows=120)
        def deliver(env):  # as the cron job would, run after run, until nothing is left
            while env["fusion.billing.webhook"]._cron_deliver():
                pass
        with receiver.running():
            errors = run_as_workers(self.env, deliver, timeout=120)
        self.assertEqual(errors, [])
        queue = self.committed_queue(service_ids)
        received = [key for key, _type, _ref in receiver.received]
        self.assertEqual({state for _s, _k, state, _a, _e in queue}, {"sent"})
        self.assertEqual(len(received), 120)
        self.assertEqual(sorted(received), sorted(key for _s, key, _st, _a, _e in queue), "every row exactly once")

    def test_an_unreachable_receiver_never_delays_another_service(self):
        """A receiver that never answers, queued first, does not hold back another app's webhooks."""
        stuck, good = Receiver("stuck"), Receiver()
        for receiver in (stuck, good):
            self.addCleanup(receiver.server.server_close)
        service_ids = self.committed_services(stuck, good, rows=5)
        errors = []
        worker = threading.Thread(target=lambda: errors.extend(run_as_workers(
            self.env, lambda env: env["fusion.billing.webhook"]._cron_deliver(), workers=1, timeout=120)))
        with stuck.running(), good.running():
            worker.start()
            delivered = good.wait_for(5, timeout=8)  # a guard against a hang, well under the send timeout
            still_stuck = stuck.waiting
            stuck.release.set()
            worker.join(120)
        self.assertTrue(delivered, f"only {len(good.received)} of 5 webhooks reached the healthy app")
        self.assertEqual(still_stuck, 1, "the unreachable app's first webhook was still in flight")
        self.assertEqual(errors, [])
        self.assertEqual({state for _s, _k, state, _a, _e in self.committed_queue(service_ids)}, {"sent"})

    def test_a_poisoned_webhook_fails_alone_and_delivered_ones_are_never_resent(self):
        """Issue 17 §3: one row that cannot be sent among good ones; the job runs twice."""
        receiver = Receiver()
        self.addCleanup(receiver.server.server_close)
        [service_id] = self.committed_services(receiver, rows=5)
        with real_session(self.env) as env:  # a corrupt row, as a bad migration or a bug could leave
            poisoned = env["fusion.billing.webhook"].search([("service_id", "=", service_id)], order="id")[2]
            env.cr.execute("UPDATE fusion_billing_webhook SET unique_key = 'clé-ключ' WHERE id = %s", [poisoned.id])
        with receiver.running():
            for _run in range(2):
                errors = run_as_workers(self.env, lambda env: env["fusion.billing.webhook"]._cron_deliver(),
                                        workers=1, timeout=120)
                self.assertEqual(errors, [])
        queue = self.committed_queue([service_id])
        states = [state for _s, key, state, _a, _e in queue]
        self.assertEqual(states, ["sent", "sent", "retrying", "sent", "sent"])
        poisoned_row = queue[2]
        self.assertEqual(poisoned_row[3], 1, "one attempt, then its retry waits (no retry loop)")
        self.assertTrue(poisoned_row[4])
        received = [key for key, _type, _ref in receiver.received]
        self.assertEqual(sorted(received), sorted(key for _s, key, state, _a, _e in queue if state == "sent"),
                         "each delivered row exactly once")

    def test_a_send_in_flight_is_recorded_when_the_run_fails(self):
        """The run raises (a claim that keeps conflicting) while a send is in flight: that send's
        outcome is still recorded, never left *sending* (sent again when its lease expires)."""
        slow, good = Receiver("stuck"), Receiver()
        for receiver in (slow, good):
            self.addCleanup(receiver.server.server_close)
        slow_id, good_id = self.committed_services(slow, good, rows=2)
        original_claim, claims = webhook_delivery.batch_jobs.claim, []

        def claim_failing_the_second_time(env, query, params):
            claims.append(params["services"])
            if len(claims) == 1:
                return original_claim(env, query, params)
            slow.release.set()  # the slow app answers while this run is failing
            raise SerializationFailure("could not serialize access due to concurrent update")

        with slow.running(), good.running(), \
                patch.object(webhook_delivery.batch_jobs, "claim", claim_failing_the_second_time):
            errors = run_as_workers(self.env, lambda env: env["fusion.billing.webhook"]._cron_deliver(),
                                    workers=1, timeout=120)
        self.assertEqual([type(error) for error in errors], [SerializationFailure], "the run failed")
        self.assertEqual(claims[1], (good_id,), "the second claim came while the slow app's send was in flight")
        queue = self.committed_queue([slow_id, good_id])  # the slow app's two rows, then the good app's
        self.assertEqual([state for _s, _k, state, _a, _e in queue], ["sent", "pending", "sent", "pending"])
        self.assertEqual(slow.requests, 1)

    def test_a_delivered_row_is_recorded_sent_whatever_else_fails(self):
        """Recording a delivery rides on nothing else: here the chatter tracking of a row's state
        fails at commit (as any side effect of an ORM write could)."""
        receiver = Receiver()
        self.addCleanup(receiver.server.server_close)
        service_ids = self.committed_services(receiver, rows=2)
        Webhook = type(self.env["fusion.billing.webhook"])

        def failing_tracking(*_args, **_kwargs):
            raise RuntimeError("tracking failed")

        def deliver(env):  # the scheduler's environment tracks changes (real_session's does not)
            env(context=dict(env.context, tracking_disable=False))["fusion.billing.webhook"]._cron_deliver()

        with receiver.running(), patch.object(Webhook, "_message_track", failing_tracking):
            errors = run_as_workers(self.env, deliver, workers=1, timeout=120)
        self.assertEqual(errors, [])
        self.assertEqual([state for _s, _k, state, _a, _e in self.committed_queue(service_ids)], ["sent", "sent"])
        self.assertEqual(len(receiver.received), 2)


@tagged("post_install", "-at_install")
class TestEventsErrorsDigest(TransactionCase):
    """The hourly ``events.errors`` digest against real sessions: an event committed after a
    digest started (its request inserted it before) is in the next digest, never skipped."""

    def setUp(self):
        super().setUp()
        with real_session(self.env) as env:
            self.service_id = env["fusion.billing.service"].create({
                "name": "Digest", "code": f"digest_{uuid.uuid4().hex[:8]}"}).id
        self.addCleanup(self._remove_committed)

    def _remove_committed(self):
        with real_session(self.env) as env:
            for table in ("fusion_billing_event", "fusion_billing_webhook"):
                env.cr.execute(f"DELETE FROM {table} WHERE service_id = %s", [self.service_id])  # noqa: S608
            env["fusion.billing.service"].browse(self.service_id).active = False

    def ingest(self, transaction_id):
        """An event of no known subscription (it bills nothing), sent in its own session."""
        now = datetime.now(timezone.utc)
        clean = lago.validate_event({"transaction_id": transaction_id, "external_subscription_id": "nobody",
                                     "code": "calls", "properties": {}}, now=now)
        with real_session(self.env) as env:
            env["fusion.billing.event"]._ingest(env["fusion.billing.service"].browse(self.service_id), [clean])

    def digest_at(self, when):
        with patch.object(fields.Datetime, "now", return_value=when), real_session(self.env) as env:
            env["fusion.billing.webhook"]._cron_events_errors()

    def test_an_event_committed_after_a_digest_started_is_in_the_next_one(self):
        started = fields.Datetime.now()
        with patch.object(self.registry, "cursor", partial(real_cursor, self.registry)):
            self.ingest("early")
        with real_session(self.env) as env:  # sent ten minutes ago, by an app set up yesterday
            env.cr.execute("UPDATE fusion_billing_event SET create_date = %s WHERE service_id = %s",
                           [started - timedelta(minutes=10), self.service_id])
            env.cr.execute("UPDATE fusion_billing_service SET create_date = %s WHERE id = %s",
                           [started - timedelta(days=1), self.service_id])
        Event = type(self.env["fusion.billing.event"])
        original_roll_up, inserted, release = Event._roll_up, threading.Event(), threading.Event()

        def roll_up_and_hold(model, *args, **kwargs):
            result = original_roll_up(model, *args, **kwargs)
            inserted.set()  # "late" is inserted, not committed yet
            release.wait(60)
            return result

        errors = []
        worker = threading.Thread(target=lambda: errors.extend(
            run_as_workers(self.env, lambda _env: self.ingest("late"), workers=1, timeout=120)))
        with patch.object(Event, "_roll_up", roll_up_and_hold):
            worker.start()
            self.assertTrue(inserted.wait(60))
            self.digest_at(started + timedelta(minutes=2))  # the hourly digest runs meanwhile
            release.set()
            worker.join(120)
        self.assertEqual(errors, [])
        self.digest_at(started + timedelta(hours=1, minutes=2))  # the next one
        with real_session(self.env) as env:
            digests = env["fusion.billing.webhook"].search(
                [("service_id", "=", self.service_id), ("event_type", "=", "events.errors")], order="id")
            reported = [json.loads(digest.payload)["events_errors"]["unknown_subscription"] for digest in digests]
        self.assertEqual(reported, [["early"], ["late"]])


@tagged("post_install", "-at_install")
class TestWebhookRowsOnlyCodeWrites(FusionBillingFixtures, HttpCase):
    """Issue 16 §3: a Fusion Billing user cannot forge what delivery signs and sends (real JSON-RPC)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.desk = cls._create_service("NexaDesk", "nexadesk")
        cls.env["ir.config_parameter"].set_param(LOOPBACK_PARAM, "1")
        cls.service.write({"billing_mode": "live", "webhook_url": "http://127.0.0.1:9/down", "webhook_secret": SECRET})
        cls.webhook = cls.env["fusion.billing.webhook"]._enqueue(cls.service, "events.errors", obj={"invalid_code": []})
        cls.webhook.write({"state": "failed", "attempts": 32})

    def call(self, user, method, *args):
        self.authenticate(user.login, user.login)
        return self.make_jsonrpc_request(f"/web/dataset/call_kw/fusion.billing.webhook/{method}", {
            "model": "fusion.billing.webhook", "method": method, "args": [self.webhook.ids, *args], "kwargs": {}})

    def test_users_cannot_write_what_is_signed_and_sent(self):
        forged = {"payload": json.dumps({"webhook_type": "invoice.payment_status_updated",
                                         "invoice": {"payment_status": "succeeded"}}),
                  "service_id": self.desk.id, "state": "pending", "next_attempt_at": "2020-01-01 00:00:00",
                  "unique_key": "forged", "event_type": "invoice.payment_status_updated"}
        before = self.webhook.read(list(forged))[0]
        for user in (self.billing_user, self.billing_admin):
            for field, value in forged.items():
                with self.assertRaises(JsonRpcException, msg=f"{user.login} wrote {field}"), \
                        mute_logger("odoo.http"):
                    self.call(user, "write", {field: value})
        self.env.invalidate_all()
        self.assertEqual(self.webhook.read(list(forged))[0], before)
        with self.assertRaises(AccessError):
            self.webhook.with_user(self.billing_user).write({"payload": "{}"})

    def test_resend_is_the_users_way_and_checks_the_group(self):
        with self.assertRaises(JsonRpcException), mute_logger("odoo.http"):
            self.call(self.plain_user, "action_resend")
        self.call(self.billing_user, "action_resend")
        self.env.invalidate_all()
        self.assertEqual(self.webhook.state, "pending")
