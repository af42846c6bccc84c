"""The live usage view (usage rows plus the deltas not folded yet) and the delta table are readable
within the reader's companies only, as the usage rows are; the view's ids are stable."""
from odoo import Command
from odoo.tests import new_test_user, tagged

from .common import FusionBillingCase


@tagged("post_install", "-at_install")
class TestUsageLiveAccess(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.here = cls.env.company
        cls.elsewhere = cls.env["res.company"].create({"name": "NexaSystems US"})
        cls.user_here = new_test_user(
            cls.env, "fc_live_here", groups="fusion_centralize_billing.group_fusion_billing_manager",
            company_id=cls.here.id, company_ids=[Command.set(cls.here.ids)])
        cls.service_us = cls._create_service("US Cloud", "uscloud", company_id=cls.elsewhere.id)
        cls.metric_us = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service_us.id, "name": "Bandwidth", "code": "bandwidth_gb", "aggregation": "sum",
            "field_name": "gb"})
        cls.order_here = cls._create_subscription(external_id="sub_here", start_date="2026-11-01")
        cls.order_us = cls._create_subscription(external_id="sub_us", service=cls.service_us, start_date="2026-11-01",
                                                company_id=cls.elsewhere.id)
        cls.row_here = cls.env["fusion.billing.usage"].create({
            "subscription_id": cls.order_here.id, "metric_id": cls.metric_bandwidth.id, "period_start": "2026-11-01",
            "period_end": "2026-12-01", "quantity": 10, "events_count": 1})
        cls.env["fusion.billing.usage"].create({
            "subscription_id": cls.order_us.id, "metric_id": cls.metric_us.id, "period_start": "2026-11-01",
            "period_end": "2026-12-01", "quantity": 20, "events_count": 1})
        delta = {"period_start": "2026-11-01", "period_end": "2026-12-01", "quantity": 5, "events_count": 1,
                 "last_event_at": "2026-11-02 10:00:00", "event_ids": []}
        cls.env["fusion.billing.usage.delta"].create([
            dict(delta, subscription_id=cls.order_here.id, service_id=cls.service.id, metric_id=cls.metric_bandwidth.id),
            dict(delta, subscription_id=cls.order_us.id, service_id=cls.service_us.id, metric_id=cls.metric_us.id),
            # a period with deltas only (no usage row yet)
            dict(delta, subscription_id=cls.order_here.id, service_id=cls.service.id, metric_id=cls.metric_bandwidth.id,
                 period_start="2026-12-01", period_end="2027-01-01"),
        ])
        cls.env.flush_all()

    def test_live_usage_and_deltas_stay_within_the_readers_companies(self):
        live = self.env["fusion.billing.usage.live"].with_user(self.user_here).search([])
        self.assertEqual(set(live.mapped("subscription_id").ids), {self.order_here.id})
        self.assertEqual(live.company_id, self.here)
        deltas = self.env["fusion.billing.usage.delta"].with_user(self.user_here).search([])
        self.assertEqual(set(deltas.mapped("subscription_id").ids), {self.order_here.id})
        everything = self.env["fusion.billing.usage.live"].search([])
        self.assertEqual(everything.filtered(lambda row: row.subscription_id == self.order_us).company_id,
                         self.elsewhere)

    def test_live_usage_ids_are_stable(self):
        live = self.env["fusion.billing.usage.live"].search([("subscription_id", "=", self.order_here.id)])
        by_period = {str(row.period_start): row for row in live}
        self.assertEqual(by_period["2026-11-01"].id, self.row_here.id, "a period with a row: the row's id")
        self.assertEqual(by_period["2026-11-01"].quantity, 15)
        self.assertLess(by_period["2026-12-01"].id, 0, "deltas only: minus its first delta's id")
        # More usage elsewhere (a new period, another subscription) changes no id of these rows.
        self.env["fusion.billing.usage.delta"].create({
            "subscription_id": self.order_us.id, "service_id": self.service_us.id, "metric_id": self.metric_us.id,
            "period_start": "2026-10-01", "period_end": "2026-11-01", "quantity": 1, "events_count": 1})
        self.env.flush_all()
        self.env.invalidate_all()
        again = self.env["fusion.billing.usage.live"].search([("subscription_id", "=", self.order_here.id)])
        self.assertEqual({str(row.period_start): row.id for row in again},
                         {period: row.id for period, row in by_period.items()})
