import json
import threading
from contextlib import contextmanager
from datetime import timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest.mock import patch

from odoo import fields
from odoo.tests import tagged
from odoo.tools import mute_logger

from ..core import signing
from .common import FusionBillingCase, real_session, run_as_workers

SECRET = "whsec_test"


class Receiver:
    """A loopback app endpoint that verifies signatures and can fail or be down on purpose."""

    def __init__(self):
        self.received = []          # (unique key, webhook_type, object ref)
        self.fail_next = 0          # answer 500 to the next N requests
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if not signing.verify(SECRET, body, self.headers.get("X-Lago-Signature")):
                    receiver.bad_signatures += 1
                if receiver.fail_next:
                    receiver.fail_next -= 1
                    self.send_response(500)
                    self.end_headers()
                    return
                payload = json.loads(body)
                receiver.received.append((self.headers["X-Lago-Unique-Key"], payload["webhook_type"],
                                          payload[payload["object_type"]].get("external_id")))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/webhooks"

    @contextmanager
    def running(self):
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()


@tagged("post_install", "-at_install")
class TestWebhooks(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.receiver = Receiver()
        cls.addClassCleanup(cls.receiver.server.server_close)
        cls.service.write({"billing_mode": "live", "webhook_url": cls.receiver.url, "webhook_secret": SECRET})

    def setUp(self):
        super().setUp()
        self.receiver.received.clear()
        self.receiver.fail_next = self.receiver.bad_signatures = 0

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
        self.env["fusion.billing.webhook"]._cron_events_errors()
        digest = self._queue().filtered(lambda w: w.event_type == "events.errors")
        self.assertEqual(json.loads(digest.payload)["events_errors"]["invalid_code"], ["bad"])
        self.assertEqual(order.x_fc_usage_ids.quantity, 180)

    def test_two_workers_never_send_the_same_row_twice(self):
        """Two real database sessions (as two Odoo workers) deliver one committed queue concurrently."""
        receiver = Receiver()
        self.addCleanup(receiver.server.server_close)

        with real_session(self.env) as env:  # committed, so that both sessions see it
            service = env["fusion.billing.service"].create({
                "name": "Two workers", "code": "two_workers", "billing_mode": "live",
                "webhook_url": receiver.url, "webhook_secret": SECRET})
            for number in range(120):
                env["fusion.billing.webhook"]._enqueue(service, "customer.created",
                                                       obj={"external_id": f"cus_{number}"})
            service_id = service.id

        def cleanup():
            with real_session(self.env) as env:
                env["fusion.billing.webhook"].search([("service_id", "=", service_id)]).unlink()
                env["fusion.billing.service"].browse(service_id).unlink()
        self.addCleanup(cleanup)

        with receiver.running():
            errors = run_as_workers(self.env, lambda env: env["fusion.billing.webhook"]._cron_deliver(batch_size=10),
                                    timeout=120)
        self.assertEqual(errors, [])
        with real_session(self.env) as env:
            queue = env["fusion.billing.webhook"].search([("service_id", "=", service_id)])
            states, keys = set(queue.mapped("state")), sorted(queue.mapped("unique_key"))
        received = [key for key, _type, _ref in receiver.received]
        self.assertEqual(states, {"sent"})
        self.assertEqual(len(received), 120)
        self.assertEqual(sorted(received), keys, "every row exactly once")
