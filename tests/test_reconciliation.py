"""Dual-run reconciliation against a real NexaCloud source, app-reported amounts, and the cutover."""
import json
from datetime import date

from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged

from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid

from .common import FusionBillingApiCase, NexacloudSourceCase

NOVEMBER = (date(2026, 11, 1), date(2026, 12, 1))


@tagged("post_install", "-at_install")
class TestReconciliation(NexacloudSourceCase):

    def setUp(self):
        super().setUp()
        self.run_import()
        Recon = self.env["fusion.billing.reconciliation"]
        # An Odoo-only subscription (the app has no bill for it) and app-reported usage for subscription 1.
        self._create_subscription(external_id="odoo-only", start_date=date(2026, 11, 1))
        Recon._api_report(self.service, [{
            "external_subscription_id": sid("s", 1), "period_start": "2026-11-01", "period_end": "2026-12-01",
            "usage": {"bandwidth_gb": 500}}])
        self.summary = Recon._run(self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))

    def rows(self):
        return {row.external_subscription_id: row for row in self.env["fusion.billing.reconciliation"].search(
            [("service_id", "=", self.service.id), ("period_start", "=", NOVEMBER[0])])}

    def test_rows_per_subscription_with_exact_amounts_status_and_explanation(self):
        rows = self.rows()
        expected = {
            sid("s", 1): ("mismatch", 19.0, 24.0),          # app also billed 5.00 of bandwidth usage
            sid("s", 2): ("match", 190.0, 190.0),           # yearly plan, term starts in the period
            sid("s", 3): ("match", 9.0, 9.0),               # inactive plan still billed
            sid("s", 5): ("match", 25.0, 25.0),             # USD plan, compared in USD
            sid("s", 7): ("match", 19.0, 19.0),
            sid("s", 8): ("match", 19.0, 19.0),
            sid("s", 4): ("missing_in_odoo", 0.0, 19.0),    # its user is soft-deleted: not imported
            sid("s", 10): ("missing_in_odoo", 0.0, 19.0),   # its user failed to import
            sid("s", 11): ("missing_in_odoo", 0.0, 10.0),   # its plan failed to import
            "odoo-only": ("missing_in_app", 49.0, 0.0),
        }
        self.assertEqual({key: (row.state, row.odoo_amount, row.app_amount) for key, row in rows.items()}, expected)
        self.assertIn("usage bandwidth_gb differs: Odoo 0.00, app 5.00", rows[sid("s", 1)].explanation)
        self.assertEqual(rows[sid("s", 1)].delta, -5.0)
        self.assertEqual(rows[sid("s", 5)].currency_id.name, "USD")
        self.assertEqual(rows[sid("s", 1)].partner_id.email, "alice@example.com")
        drill_down = rows[sid("s", 1)].action_view_usage()
        self.assertEqual(set(self.env["fusion.billing.usage"].search(drill_down["domain"]).mapped("metric_id.code")),
                         {"vcpu", "ram_mb", "disk_gb"})  # the allocation baselines imported from deployments
        self.assertEqual(rows[sid("s", 4)].partner_id, self.env["res.partner"])  # never imported
        self.assertEqual(self.summary["counts"], {"match": 5, "mismatch": 1, "missing_in_odoo": 3, "missing_in_app": 1})

    def test_rerun_updates_rows_in_place_and_counts_runs(self):
        before = {key: (row.id, row.state, row.delta) for key, row in self.rows().items()}
        Recon = self.env["fusion.billing.reconciliation"]
        Recon._run(self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))
        after = self.rows()
        self.assertEqual({key: (row.id, row.state, row.delta) for key, row in after.items()}, before)
        self.assertEqual(set(after[sid("s", 1)].mapped("run_count")), {2})
        # The app corrects its report: the row follows, and the chatter keeps the history.
        Recon._api_report(self.service, [{"external_subscription_id": sid("s", 1), "period_start": "2026-11-01",
                                          "period_end": "2026-12-01", "usage": {}}])
        Recon._run(self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))
        row = self.rows()[sid("s", 1)]
        self.assertEqual((row.state, row.run_count), ("match", 3))
        runs = self.service.message_ids.filtered(lambda m: "Reconciliation run" in m.body).sorted("id")
        self.assertEqual(len(runs), 3, "each run's figures are kept on the service")
        self.assertIn("2026-11-01 – 2026-11-30: 5 match, 1 mismatch, 3 missing in Odoo, 1 missing in the app",
                      runs[0].body)
        self.assertIn("6 match, 0 mismatch", runs[-1].body)

    def test_cutover_is_for_administrators_confirms_nothing_and_is_logged(self):
        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).action_switch_to_live()
        action = self.service.with_user(self.billing_admin).action_switch_to_live()
        wizard = self.env[action["res_model"]].with_user(self.billing_admin).with_context(action["context"]).create({})
        self.assertEqual((wizard.match_count, wizard.mismatch_count, wizard.missing_count), (5, 1, 4))
        wizard.action_confirm()
        self.assertEqual(self.service.billing_mode, "live")
        self.assertIn("5 match, 1 mismatch, 4 missing", self.service.message_ids[0].body)
        orders = self.env["sale.order"].search([("x_fc_service_id", "=", self.service.id)])
        self.assertEqual(set(orders.mapped("state")), {"draft"}, "going live confirms nothing by itself")

        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).action_activate_subscriptions()
        self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.assertEqual(set(orders.mapped("state")), {"sale"})
        first = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 1))
        self.assertEqual((first.order_line.product_id, first.amount_untaxed),
                         (first.plan_id.x_fc_product_id, 19.0))
        self.assertFalse(orders.filtered("payment_token_id"), "no customer has a saved payment method in Odoo")
        self.assertIn("7 subscriptions confirmed", self.service.message_ids[0].body)
        self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.assertIn("0 subscriptions confirmed", self.service.message_ids[0].body)

        self.service.with_user(self.billing_admin).action_switch_to_shadow()
        self.assertEqual(self.service.billing_mode, "shadow")
        self.assertIn("Switched back to shadow", self.service.message_ids[0].body)

    def test_activation_refused_in_shadow(self):
        with self.assertRaises(UserError):
            self.service.with_user(self.billing_admin).action_activate_subscriptions()


@tagged("post_install", "-at_install")
class TestReconciliationApi(FusionBillingApiCase):

    def test_app_reports_its_bills_and_bad_input_gets_the_lago_envelope(self):
        body = {"app_bills": [{"external_subscription_id": "sub_1", "period_start": "2026-10-01",
                               "period_end": "2026-11-01", "base_fee_cents": 4900, "usage": {"bandwidth_gb": 250}}]}
        response = self.api("POST", "reconciliation/app_bills", body)
        self.assertEqual((response.status_code, response.json()), (200, {"app_bills": {"received": 1}}))
        row = self.env["fusion.billing.reconciliation"].search([("external_subscription_id", "=", "sub_1")])
        self.assertEqual((row.state, row.app_reported["usage"]), ("missing_in_odoo", {"bandwidth_gb": 250}))

        bad = self.api("POST", "reconciliation/app_bills", {"app_bills": [{"external_subscription_id": "x",
                                                                          "period_start": "11/2026",
                                                                          "base_fee_cents": "49.00"}]})
        self.assertEqual(bad.status_code, 422)
        self.assertEqual(bad.json()["error_details"]["0"],
                         {"period_start": ["invalid_date"], "period_end": ["invalid_date"],
                          "base_fee_cents": ["value_is_invalid"]})
        unauthorised = self.url_open(f"{self.API}/reconciliation/app_bills", data=json.dumps(body),
                                     headers={"Content-Type": "application/json"}, method="POST")
        self.assertEqual(unauthorised.status_code, 401)
