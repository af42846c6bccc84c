"""Append-only usage: events sent while a period is being closed end up billed or late, never lost.

Real database sessions (committed, as Odoo workers have), interleaved on purpose: the ingest of
an event commits while the period close is running, after the close's snapshot.
"""
import uuid
from datetime import date, datetime, timezone
from functools import partial
from unittest.mock import patch

from odoo import Command
from odoo.tests import TransactionCase, tagged

from ..core import lago, periods
from .common import real_cursor, real_session


@tagged("post_install", "-at_install")
class TestEventsDuringThePeriodClose(TransactionCase):
    """Nothing is written in the test's own transaction (the sessions could not see it)."""

    def setUp(self):
        super().setUp()
        self.start = periods.add_period(date.today().replace(day=1), "month", 1, -1)  # last month: due
        with real_session(self.env) as env:
            service = env["fusion.billing.service"].create({"name": "Deltas", "code": f"deltas_{uuid.uuid4().hex[:8]}"})
            metric = env["fusion.billing.metric"].create({
                "service_id": service.id, "code": "calls", "name": "Calls", "aggregation": "sum", "field_name": "n"})
            product = env["product.product"].create({"name": "Deltas plan", "type": "service",
                                                     "recurring_invoice": True})
            plan = env["sale.subscription.plan"].create({
                "name": "Deltas", "x_fc_service_id": service.id, "x_fc_plan_code": "deltas",
                "x_fc_amount": 10, "x_fc_product_id": product.id})
            env["fusion.billing.charge"].create({"service_id": service.id, "plan_id": plan.id, "metric_id": metric.id,
                                                 "charge_model": "standard", "properties": {"amount": "1"}})
            partner = env["res.partner"].create({"name": "Deltas client"})
            order = env["sale.order"].create({
                "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": "deltas-sub", "pricelist_id": service._fc_pricelist().id,
                "start_date": self.start, "order_line": [Command.create({"product_id": product.id})]})
            self.ids = {"service": service.id, "order": order.id, "metric": metric.id,
                        "catalog": [("sale.subscription.plan", plan.id), ("product.product", product.id)]}
        self.addCleanup(self._remove_committed)

    def _remove_committed(self):
        with real_session(self.env) as env:
            cr = env.cr
            cr.execute("DELETE FROM fusion_billing_usage_delta WHERE subscription_id = %s", [self.ids["order"]])
            cr.execute("DELETE FROM fusion_billing_usage WHERE subscription_id = %s", [self.ids["order"]])
            for table in ("fusion_billing_event", "fusion_billing_webhook", "fusion_billing_charge"):
                cr.execute(f"DELETE FROM {table} WHERE service_id = %s", [self.ids["service"]])  # noqa: S608
            cr.execute("DELETE FROM sale_order WHERE id = %s", [self.ids["order"]])
            for model, record_id in self.ids["catalog"]:
                env[model].browse(record_id).unlink()
            env["fusion.billing.metric"].browse(self.ids["metric"]).unlink()
            env["fusion.billing.service"].browse(self.ids["service"]).active = False

    def ingest(self, transaction_id, units):
        """An events API call in its own session (its writes commit on their own, as in production)."""
        timestamp = datetime.combine(self.start.replace(day=20), datetime.min.time(), tzinfo=timezone.utc)
        clean = lago.validate_event({"transaction_id": transaction_id, "external_subscription_id": "deltas-sub",
                                     "code": "calls", "timestamp": int(timestamp.timestamp()),
                                     "properties": {"n": units}}, now=timestamp)
        with real_session(self.env) as env:
            [event] = env["fusion.billing.event"]._ingest(env["fusion.billing.service"].browse(self.ids["service"]),
                                                          [clean])
        return event["status"]

    def state_of(self, env):
        env.cr.execute("SELECT transaction_id, state FROM fusion_billing_event WHERE service_id = %s",
                       [self.ids["service"]])
        events = dict(env.cr.fetchall())
        env.cr.execute("SELECT quantity, events_count, state FROM fusion_billing_usage WHERE subscription_id = %s "
                       "AND period_start = %s", [self.ids["order"], self.start])
        return events, env.cr.fetchall()

    def test_an_event_committed_during_the_close_is_billed_or_late_never_lost(self):
        registry = self.registry
        Usage = type(self.env["fusion.billing.usage"])
        original_fold, during_close = Usage._fc_fold, []

        def fold_while_an_event_arrives(model, subscription_ids):
            # The close has claimed the subscription (its snapshot is taken): an event commits now.
            if not during_close:
                during_close.append(self.ingest("during", 5))
            return original_fold(model, subscription_ids)

        with patch.object(registry, "cursor", partial(real_cursor, registry)):
            self.assertEqual(self.ingest("before", 2), "processed")
            with patch.object(Usage, "_fc_fold", fold_while_an_event_arrives), real_session(self.env) as env:
                env["sale.order"]._cron_close_usage_periods()
            self.assertEqual(during_close, ["processed"], "answered before the close committed")
            after = self.ingest("after", 7)
            with real_session(self.env) as env:
                env["fusion.billing.usage"]._cron_fold()  # the fold job, a few minutes later
            with real_session(self.env) as env:
                events, rows = self.state_of(env)
                env.cr.execute("SELECT count(*) FROM fusion_billing_usage_delta WHERE subscription_id = %s",
                               [self.ids["order"]])
                deltas_left = env.cr.fetchone()[0]

        self.assertEqual(after, "late", "the period was closed when it arrived")
        self.assertEqual(events, {"before": "processed", "during": "late", "after": "late"})
        self.assertEqual([(float(quantity), count, state) for quantity, count, state in rows], [(2.0, 1, "closed")],
                         "the close billed what it saw, and only that")
        self.assertEqual(deltas_left, 0, "every delta folded or turned into late events")

    def test_an_event_committed_before_the_close_is_billed(self):
        with patch.object(self.registry, "cursor", partial(real_cursor, self.registry)):
            self.ingest("first", 2)
            self.ingest("second", 3)
            with real_session(self.env) as env:
                usage = env["sale.order"].browse(self.ids["order"])._fc_usage_values(self.start)
                self.assertEqual(usage["charges_usage"][0]["units"], 5, "current usage counts the deltas")
                env["sale.order"]._cron_close_usage_periods()
            with real_session(self.env) as env:
                events, rows = self.state_of(env)
        self.assertEqual(events, {"first": "processed", "second": "processed"})
        self.assertEqual([(float(quantity), count, state) for quantity, count, state in rows], [(5.0, 2, "closed")])
