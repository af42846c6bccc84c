"""What the screens show: names as people wrote them, quantities in the metric's unit and precision,
and the service overview (what Odoo would bill so far, what needs attention)."""
from datetime import date, timedelta
from unittest.mock import patch

from odoo import fields
from odoo.tests import tagged

from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid
from odoo.addons.fusion_centralize_billing.models.fusion_billing_charge import FusionBillingCharge

from .common import FusionBillingCase, NexacloudSourceCase


@tagged("post_install", "-at_install")
class TestImportedNames(NexacloudSourceCase):

    def bakery(self):
        return self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 2))]).partner_id

    def test_a_company_named_like_its_contact_is_shown_once(self):
        """NexaCloud user 2 has only a company name: before, 'Bob's Bakery Ltd., Bob's Bakery Ltd.'."""
        self.run_import()
        self.assertEqual(self.bakery().display_name, "Bob's Bakery Ltd.")
        alice = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 1))]).partner_id
        self.assertEqual(alice.display_name, "Alice Martin")

    def test_a_rerun_repairs_a_contact_an_earlier_import_doubled(self):
        """A contact the import created, doubled by the previous importer and edited by nobody since
        (the identity rules let the import keep only such unshared contacts up to date)."""
        self.run_import()
        link = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 6))])  # company only
        partner = link.partner_id
        self.assertTrue(link.partner_created)
        self.assertEqual(partner.display_name, partner.name)
        # What the previous importer wrote: the company name on the contact, in its sync snapshot and memory.
        partner.company_name = partner.name
        link.write({"metadata": dict(link.metadata, company_name=partner.name),
                    "partner_synced": link._fc_partner_snapshot(partner)})
        self.assertEqual(partner.display_name, f"{partner.name}, {partner.name}")
        self.run_import()
        self.assertEqual(partner.display_name, partner.name)
        self.assertFalse(partner.company_name)

    def test_imported_metrics_carry_their_unit_and_precision(self):
        self.run_import()
        metrics = {m.code: (m.unit, m.decimal_places) for m in self.env["fusion.billing.metric"].search(
            [("service_id.code", "=", "nexacloud")])}
        self.assertEqual(metrics, {"vcpu": ("vCPUs", 0), "ram_mb": ("MiB", 0), "disk_gb": ("GB", 0),
                                   "bandwidth_gb": ("GB", 2)})
        ram = self.env["fusion.billing.usage"].search([("metric_id.code", "=", "ram_mb")], limit=1)
        self.assertEqual(ram.quantity_display, f"{int(ram.quantity):,} MiB")


@tagged("post_install", "-at_install")
class TestQuantities(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.ram = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service.id, "name": "RAM", "code": "ram_mb", "aggregation": "max",
            "field_name": "mb", "unit": "MiB", "decimal_places": 0})
        cls.order = cls._create_subscription(start_date=date.today().replace(day=1))

    def usage(self, metric, quantity):
        start, end = self.order._fc_period()
        return self.env["fusion.billing.usage"].create({
            "subscription_id": self.order.id, "metric_id": metric.id, "period_start": start, "period_end": end,
            "quantity": quantity})

    def test_quantities_use_the_metric_unit_and_precision(self):
        self.assertEqual(self.usage(self.ram, 131072).quantity_display, "131,072 MiB")  # was 131,072.000000
        self.metric_bandwidth.unit = "GB"
        self.assertEqual(self.metric_bandwidth.decimal_places, 2, "sums default to 2 decimals")
        self.assertEqual(self.usage(self.metric_bandwidth, 1234.5).quantity_display, "1,234.50 GB")
        requests = self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": "API calls", "code": "calls", "aggregation": "count"})
        self.assertEqual(requests.decimal_places, 0, "counts default to whole numbers")
        self.assertEqual(requests._fc_format_quantity(1500), "1,500")

    def test_the_current_usage_panel_shows_the_unit(self):
        self.metric_bandwidth.write({"unit": "GB", "decimal_places": 1})
        self.usage(self.metric_bandwidth, 131072)
        self.assertIn("131,072.0 GB", self.order.x_fc_current_usage_html)
        self.assertNotIn("131072", self.order.x_fc_current_usage_html)


@tagged("post_install", "-at_install")
class TestServiceOverview(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.metric_bandwidth.unit = "GB"
        first = date.today().replace(day=1)
        # Bandwidth: 100 GB included, then 0.05 per GB. Two subscriptions over the quota, 30 within it.
        cls.quantities = [150, 300] + [80] * 30
        cls.orders = cls.env["sale.order"]
        for index, quantity in enumerate(cls.quantities):
            order = cls._create_subscription(external_id=f"ov_{index}", start_date=first)
            start, end = order._fc_period()
            cls.env["fusion.billing.usage"].create({
                "subscription_id": order.id, "metric_id": cls.metric_bandwidth.id, "period_start": start,
                "period_end": end, "quantity": quantity, "events_count": 3})
            cls.orders |= order
        # Last period's usage is not "so far".
        cls.env["fusion.billing.usage"].create({
            "subscription_id": cls.orders[0].id, "metric_id": cls.metric_bandwidth.id,
            "period_start": (first - timedelta(days=1)).replace(day=1), "period_end": first, "quantity": 5000,
            "state": "closed"})
        now = fields.Datetime.now()
        Event = cls.env["fusion.billing.event"]
        for index, state in enumerate(["unknown_metric"] * 3 + ["unknown_subscription", "processed", "processed"]):
            Event.create({"service_id": cls.service.id, "transaction_id": f"tx{index}", "code": "bandwidth_gb",
                          "external_subscription_id": "ov_0", "timestamp": now - timedelta(days=index % 2),
                          "fingerprint": f"f{index}", "state": state})
        Webhook = cls.env["fusion.billing.webhook"]
        for state in ("failed", "failed", "retrying", "sent"):
            Webhook.create({"service_id": cls.service.id, "event_type": "invoice.created", "object_type": "invoice",
                            "payload": "{}", "state": state})
        Recon = cls.env["fusion.billing.reconciliation"]
        for period, state, odoo_amount, app_amount in ((date(2026, 9, 1), "mismatch", 1, 2),
                                                         (date(2026, 10, 1), "match", 19, 19),
                                                         (date(2026, 10, 1), "match", 49, 49),
                                                         (date(2026, 10, 1), "mismatch", 19, 24)):
            Recon.create({"service_id": cls.service.id, "currency_id": cls.cad.id, "period_start": period,
                          "period_end": period + timedelta(days=31), "external_subscription_id": f"{period}-{odoo_amount}-{app_amount}",
                          "state": state, "odoo_amount": odoo_amount, "app_amount": app_amount,
                          "delta": odoo_amount - app_amount})

    def test_amounts_so_far_are_what_each_subscription_would_be_billed(self):
        values = self.service.with_user(self.billing_user)._fc_overview_values()
        (row,) = values["metrics"]
        self.assertEqual((row["code"], row["subscriptions"]), ("bandwidth_gb", 32))
        self.assertEqual(row["usage"], "2,850.00 GB")
        # The same figures the subscriptions' current usage (and their invoices) show, summed.
        per_subscription = sum(order._fc_usage_values()["amount_cents"] for order in self.orders)
        self.assertEqual(per_subscription, 1250)  # (150 - 100) × 0.05 + (300 - 100) × 0.05
        self.assertEqual(row["amount"] * 100, per_subscription)
        self.assertEqual(values["total_amount"] * 100, per_subscription)

    def test_rows_within_their_quota_are_rated_once(self):
        calls = []
        original = FusionBillingCharge._rate

        def rate(charge, *args, **kwargs):
            calls.append(args)
            return original(charge, *args, **kwargs)
        with patch.object(FusionBillingCharge, "_rate", rate):
            self.service._fc_overview_values()
        self.assertEqual(len(calls), 3, "one rating for the 30 rows within the quota, one per row above it")

    def test_what_needs_attention(self):
        values = self.service._fc_overview_values()
        self.assertEqual(values["unbillable"]["total"], 4)
        self.assertEqual({s["state"]: s["count"] for s in values["unbillable"]["states"]},
                         {"unknown_metric": 3, "unknown_subscription": 1})
        self.assertEqual(values["webhooks"], {"failed": 2, "retrying": 1})
        recon = values["reconciliation"]
        self.assertEqual(recon["period_start"], date(2026, 10, 1))
        self.assertEqual({s["state"]: s["count"] for s in recon["states"]}, {"match": 2, "mismatch": 1})
        self.assertAlmostEqual(recon["matched_share"], 2 / 3)
        days = values["days"]
        self.assertEqual(len(days["bars"]), 14)
        self.assertEqual((days["total"], days["total_unbillable"]), (6, 4))
        self.assertEqual(sum(d["billable"] for d in days["days"][-2:]), 2)

    def test_the_form_shows_it_to_billing_users(self):
        html = str(self.service.with_user(self.billing_user).overview_html)
        for text in ("Current periods so far", "2,850.00 GB", "Unbillable events", "Webhook failures",
                     "Latest reconciliation", "<svg", "67% match"):
            self.assertIn(text, html)
        self.assertEqual(html.count("<rect"), 28)  # 14 days × (billable, unbillable)
        for action in ("action_view_current_usage", "action_view_unbillable_events",
                       "action_view_webhook_failures", "action_view_latest_reconciliation"):
            result = getattr(self.service.with_user(self.billing_user), action)()
            self.assertTrue(self.env[result["res_model"]].with_user(self.billing_user).search(result["domain"]), action)

    def test_a_service_without_activity_says_so(self):
        quiet = self._create_service("NexaMaps", "nexamaps")
        html = str(quiet.overview_html)
        self.assertIn("No usage in the current periods yet.", html)
        self.assertIn("Not reconciled yet.", html)
        self.assertIn("Every event was billable.", html)
