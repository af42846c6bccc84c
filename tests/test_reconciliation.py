"""Dual-run reconciliation against a real NexaCloud source: one reason per row, figures per reason from
run to run, the importer's banner, the cutover confirmation, and the daily job's isolation per service."""
import json
from datetime import date, datetime

from freezegun import freeze_time

from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged
from odoo.tools import mute_logger

from odoo.addons.fusion_centralize_billing.core import periods
from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid

from .common import FusionBillingApiCase, FusionBillingCase, NexacloudSourceCase, real_session, run_as_workers

NOVEMBER = (date(2026, 11, 1), date(2026, 12, 1))
# (n, user n, plan id, status, current_period_start, current_period_end, created_at, canceled_at)
EXTRA_BEFORE_IMPORT = [
    (12, 1, 1, "canceled", "2026-11-01", "2026-12-01", "2025-02-01", "2026-11-15"),  # canceled before the import
    (13, 1, 2, "active", None, "2026-11-03", "2025-02-10", None),   # off its start date's grid: renews on Nov 3
    (14, 1, 1, "active", "2026-10-20", "2026-11-20", "2025-02-20", None),   # canceled after the import (below)
    (16, 1, 1, "active", "2026-11-01", "2026-12-01", "2025-02-01", None),   # the app reports 2 cents more
    (17, 1, 1, "active", "2026-11-01", "2026-12-01", "2025-02-01", None),   # a plain match
    (18, 1, 2, "active", "2026-03-03", "2027-03-03", "2025-03-03", None),   # yearly, no renewal in November
    (19, 4, 2, "active", "2026-11-01", "2027-11-01", "2025-02-01", None),   # soft-deleted user, yearly
    (20, 4, 1, "trialing", "2026-11-20", "2026-12-04", "2026-11-20", None),  # soft-deleted user, trial
    (21, 1, 2, "active", "2025-11-20", "2026-11-20", "2024-11-20", None),   # Stripe's anchor moves after the import
    (22, 1, 1, "active", "2026-11-01", "2026-12-01", "2025-02-01", None),   # a trial granted after the import
]


def insert_subscriptions(cursor, rows):
    for n, user, plan, status, start, end, created, canceled in rows:
        cursor.execute("""INSERT INTO subscriptions (id, user_id, plan_id, status, stripe_subscription_id,
                                                     current_period_start, current_period_end, created_at, canceled_at)
                          VALUES (%s, %s, %s, %s, 'sub_' || %s, %s, %s, %s, %s)""",
                       (sid("s", n), sid("u", user), plan, status, n, start, end, created, canceled))


@tagged("post_install", "-at_install")
class TestReconciliation(NexacloudSourceCase):
    """The messy sample plus one case per reason, imported on Nov 10, then changed at the source."""

    def setUp(self):
        super().setUp()
        with self.source_cursor() as cursor:
            insert_subscriptions(cursor, EXTRA_BEFORE_IMPORT)
        self.import_wizard = self.run_import()
        Recon = self.env["fusion.billing.reconciliation"]
        # The import ran on Nov 10; since then NexaCloud changed.
        self.env.cr.execute("UPDATE sale_order SET create_date = '2026-11-10 09:00' WHERE x_fc_service_id = %s",
                            [self.service.id])
        with self.source_cursor() as cursor:
            insert_subscriptions(cursor, [(15, 1, 1, "active", "2026-11-20", "2026-12-20", "2026-11-20", None)])
            cursor.execute("UPDATE subscriptions SET status = 'canceled', canceled_at = '2026-11-15' WHERE id = %s",
                           [sid("s", 14)])
            cursor.execute("UPDATE plans SET currency = 'CAD' WHERE id = 4")     # s5's plan was in USD
            cursor.execute("UPDATE plans SET price_cents = 1200 WHERE id = 3")   # s3's plan went up
            cursor.execute("UPDATE subscriptions SET plan_id = 3 WHERE id = %s", [sid("s", 7)])
            cursor.execute("UPDATE subscriptions SET current_period_start = '2026-10-25', current_period_end = "
                           "'2027-10-25' WHERE id = %s", [sid("s", 21)])
            cursor.execute("UPDATE subscriptions SET status = 'trialing', current_period_start = '2026-11-08', "
                           "current_period_end = '2026-12-08' WHERE id = %s", [sid("s", 22)])
        # Odoo-only subscriptions (one without an account link) and what the app reported through the API.
        alice = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 1))])
        self._create_subscription(external_id="odoo-only", start_date=date(2026, 11, 1))
        self._create_subscription(external_id="odoo-linked-only", start_date=date(2026, 11, 1),
                                  partner=alice.partner_id, x_fc_account_link_id=alice.id)
        # The app created s8 through the API while its Stripe subscription is incomplete (never paid).
        dana = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 8))])
        starter = self.env["sale.subscription.plan"].search([("x_fc_service_id", "=", self.service.id),
                                                             ("x_fc_plan_code", "=", "starter")])
        self._create_subscription(external_id=sid("s", 8), plan=starter, start_date=date(2026, 11, 1),
                                  partner=dana.partner_id, x_fc_account_link_id=dana.id)
        Recon._api_report(self.service, [
            {"external_subscription_id": sid("s", 1), "period_start": "2026-11-01", "period_end": "2026-12-01",
             "usage": {"bandwidth_gb": 500}},
            {"external_subscription_id": sid("s", 16), "period_start": "2026-11-01", "period_end": "2026-12-01",
             "usage": {"bandwidth_gb": 1, "vcpu": 1}},
            {"external_subscription_id": "app-only", "external_customer_id": sid("u", 1), "period_start": "2026-11-01",
             "period_end": "2026-12-01", "base_fee_cents": 1900},
            {"external_subscription_id": "app-garbled", "period_start": "2026-11-01", "period_end": "2026-12-01"}])
        # A row whose stored report is malformed (written before validation existed, or by hand).
        self.rows()["app-garbled"].app_reported = {"usage": {"bandwidth_gb": "lots"}}
        self.summary = Recon._run(self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))

    def rows(self):
        return {row.external_subscription_id: row for row in self.env["fusion.billing.reconciliation"].search(
            [("service_id", "=", self.service.id), ("period_start", "=", NOVEMBER[0])])}

    def test_every_row_names_its_one_reason(self):
        rows = self.rows()
        expected = {
            sid("s", 1): ("mismatch", "usage_differs", 19.0, 24.0),       # the app also billed 5.00 of bandwidth
            sid("s", 2): ("match", False, 0.0, 0.0),                      # in trial until Dec 1 on both sides
            sid("s", 3): ("mismatch", "price_differs", 9.0, 12.0),        # the plan's price changed at the source
            sid("s", 4): ("missing_in_odoo", "user_deleted", 0.0, 19.0),  # soft-deleted user, Stripe still bills
            sid("s", 5): ("mismatch", "currency", 25.0, 25.0),            # the plan moved from USD to CAD
            sid("s", 7): ("mismatch", "plan_differs", 19.0, 12.0),        # moved to another plan
            sid("s", 8): ("mismatch", "not_started", 19.0, 0.0),          # incomplete: Stripe bills nothing, the
                                                                          # app's own copy in Odoo would
            sid("s", 10): ("missing_in_odoo", "not_imported", 0.0, 19.0),  # its user has an invalid e-mail
            sid("s", 11): ("missing_in_odoo", "not_imported", 0.0, 10.0),  # its plan has an unknown interval
            sid("s", 12): ("missing_in_odoo", "canceled_before_import", 0.0, 19.0),
            sid("s", 13): ("match", False, 190.0, 190.0),                 # both on its next invoice date's grid
            sid("s", 14): ("mismatch", "canceled_after_import", 19.0, 0.0),
            sid("s", 15): ("missing_in_odoo", "new_since_import", 0.0, 19.0),
            sid("s", 16): ("mismatch", "amount_differs", 19.0, 19.02),
            sid("s", 17): ("match", False, 19.0, 19.0),
            sid("s", 18): ("match", False, 0.0, 0.0),                     # no renewal on either side: a match
            sid("s", 19): ("missing_in_odoo", "user_deleted", 0.0, 190.0),
            sid("s", 20): ("match", False, 0.0, 0.0),                     # a trial of a deleted user: nothing billed
            sid("s", 21): ("mismatch", "renewal_timing", 190.0, 0.0),
            sid("s", 22): ("mismatch", "trial", 19.0, 0.0),
            "odoo-only": ("missing_in_app", "no_account_link", 49.0, 0.0),
            "odoo-linked-only": ("missing_in_app", "missing_in_app", 49.0, 0.0),
            "app-only": ("missing_in_odoo", "missing_in_odoo", 0.0, 19.0),
            "app-garbled": ("error", "error", 0.0, 0.0),
        }
        self.assertEqual({key: (row.state, row.reason, row.odoo_amount, row.app_amount) for key, row in rows.items()},
                         expected)
        self.assertEqual(set(self.env["fusion.billing.reconciliation"]._fields["reason"].get_values(self.env)),
                         {reason for _s, reason, _o, _a in expected.values() if reason},
                         "every reason is present at least once")
        kinds = {row.reason: row.reason_kind for row in rows.values() if row.reason}
        self.assertEqual({reason for reason, kind in kinds.items() if kind == "timing"},
                         {"trial", "canceled_before_import", "renewal_timing", "canceled_after_import",
                          "new_since_import"})
        self.assertFalse(any(row.reason or row.reason_kind for row in rows.values() if row.state == "match"))

    def test_explanations_are_plain_and_specific(self):
        rows = self.rows()
        self.assertEqual(rows[sid("s", 4)].explanation,
                         f"Not imported: orphan: its user {sid('u', 4)} is soft-deleted, but Stripe still bills this "
                         "active subscription: the app bills 19.00 CAD (renewal of 2026-11-01); Odoo will never bill it.")
        self.assertEqual(rows[sid("s", 4)].external_customer_id, sid("u", 4))
        self.assertIn("invalid e-mail address 'not-an-email'", rows[sid("s", 10)].explanation)
        self.assertIn("unknown billing interval 'fortnight'", rows[sid("s", 11)].explanation)
        self.assertTrue(rows[sid("s", 1)].explanation.startswith(
            "Usage differs, by charge: bandwidth_gb: Odoo 0.00, app 5.00."))
        self.assertEqual(rows[sid("s", 1)].delta, -5.0)
        self.assertTrue(rows[sid("s", 12)].explanation.startswith(
            "Not imported: canceled in the app on 2026-11-15, before the import;"))
        self.assertTrue(rows[sid("s", 21)].explanation.startswith(
            "Renewal timing: Odoo renews on 2026-11-20, the app on none."))
        self.assertTrue(rows[sid("s", 22)].explanation.startswith(
            "In trial in the app until 2026-12-08: Stripe bills nothing before the trial ends, Odoo's copy renews on "
            "2026-11-01 (it does not know the trial)."))
        self.assertIn("after the last import (2026-11-10)", rows[sid("s", 15)].explanation)
        self.assertIn("its reported bill is malformed", rows["app-garbled"].explanation)
        self.assertEqual(rows[sid("s", 5)].currency_id.name, "USD")
        self.assertEqual(rows[sid("s", 1)].partner_id.email, "alice@example.com")
        self.assertEqual(rows[sid("s", 4)].partner_id, self.env["res.partner"])  # never imported
        drill_down = rows[sid("s", 1)].action_view_usage()
        self.assertEqual(set(self.env["fusion.billing.usage"].search(drill_down["domain"]).mapped("metric_id.code")),
                         {"vcpu", "ram_mb", "disk_gb"})  # the allocation baselines imported from deployments

    def test_the_list_groups_and_filters_by_reason(self):
        Recon = self.env["fusion.billing.reconciliation"].with_user(self.billing_user)
        domain = [("service_id", "=", self.service.id), ("period_start", "=", NOVEMBER[0])]
        groups = dict(Recon._read_group(domain + [("state", "!=", "match")], ["reason"], ["__count"]))
        self.assertEqual((groups["user_deleted"], groups["not_imported"], groups["usage_differs"]), (2, 2, 1))
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "fusion_centralize_billing.fusion_billing_reconciliation_action")
        self.assertIn("search_default_by_reason", action["context"])
        self.assertEqual(Recon.search_count(domain + [("reason_kind", "=", "real")]), 14)

    def test_the_run_keeps_figures_per_reason_and_their_change_from_run_to_run(self):
        run = self.summary["run"]
        self.assertEqual(self.service.last_reconciliation_run_id, run)
        self.assertEqual((run.state, run.row_count, run.match_count, run.real_count, run.timing_count),
                         ("done", 24, 5, 14, 5))
        figures = {(line.reason, line.currency_id.name): (line.count, line.amount, line.count_change)
                   for line in run.line_ids}
        self.assertEqual(figures[("user_deleted", "CAD")], (2, 209.0, 2))
        self.assertEqual(figures[("usage_differs", "CAD")], (1, 5.0, 1))
        self.assertEqual(figures[("currency", "USD")], (1, 0.0, 1))
        self.assertEqual(run.real_amount, sum(line.amount for line in run.line_ids
                                              if line.kind == "real" and line.currency_id.name == "CAD"))
        self.assertIn("Not imported: user deleted in the app, Stripe still bills", run.summary_html)

        Recon = self.env["fusion.billing.reconciliation"]
        before = {key: (row.id, row.state, row.reason, row.delta) for key, row in self.rows().items()}
        second = Recon._run(self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))["run"]
        self.assertEqual({key: (row.id, row.state, row.reason, row.delta) for key, row in self.rows().items()}, before)
        self.assertEqual(set(self.rows()[sid("s", 4)].mapped("run_count")), {2})
        self.assertEqual((second.previous_run_id, {line.count_change for line in second.line_ids}), (run, {0}))
        # The app corrects its report and the plan price is put back: those rows follow, the chatter keeps the history.
        Recon._api_report(self.service, [{"external_subscription_id": sid("s", 1), "period_start": "2026-11-01",
                                          "period_end": "2026-12-01", "usage": {}}])
        with self.source_cursor() as cursor:
            cursor.execute("UPDATE plans SET price_cents = 900 WHERE id = 3")
            cursor.execute("UPDATE subscriptions SET status = 'past_due' WHERE id = %s", [sid("s", 4)])  # wording only
        third = Recon.with_context(tracking_disable=False)._run(
            self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))["run"]
        rows = self.rows()
        self.assertEqual((rows[sid("s", 1)].state, rows[sid("s", 1)].reason, rows[sid("s", 1)].run_count),
                         ("match", False, 3))
        self.assertEqual(rows[sid("s", 3)].state, "match")
        self.assertEqual((rows[sid("s", 4)].reason, rows[sid("s", 4)].run_count), ("user_deleted", 3))
        self.assertIn("Stripe still bills this past_due subscription", rows[sid("s", 4)].explanation)
        changes = {line.reason: (line.count, line.count_change) for line in third.line_ids}
        self.assertEqual((changes["usage_differs"], changes["price_differs"]), ((0, -1), (0, -1)))
        self.assertEqual(third.match_count, run.match_count + 2)
        self.env.cr.precommit.run()  # tracking values are written when the transaction commits
        tracked = rows[sid("s", 3)].message_ids.tracking_value_ids.filtered(lambda t: t.field_id.name == "reason")
        self.assertEqual(tracked.mapped("old_value_char"), ["Plan price differs"],
                         "the row's chatter keeps its earlier reason")
        notes = self.service.message_ids.filtered(lambda m: "Reconciliation run" in m.body).sorted("id")
        self.assertEqual(len(notes), 3, "each run's figures are also noted on the service")
        self.assertIn("Not imported: user deleted in the app, Stripe still bills: 2 (209.00 CAD)", notes[0].body)

    def test_the_import_banner_counts_live_subscriptions_of_deleted_users_and_their_monthly_amount(self):
        wizard = self.import_wizard
        self.assertEqual(wizard.banner, "danger")  # the sample's failed rows come first
        # carol's active monthly (19.00) and yearly (190.00 / 12) subscriptions; her trial is not billed
        self.assertIn("2 live Stripe subscriptions were skipped because their NexaCloud user is soft-deleted: "
                      "Stripe still bills them 34.83 CAD a month, Odoo will not.", wizard.banner_message)
        with self.source_cursor() as cursor:  # without failures the banner is amber and says the same
            cursor.execute("DELETE FROM deployments WHERE user_id = %s OR subscription_id IN (%s, %s)",
                           [sid("u", 9), sid("s", 11), sid("s", 10)])
            cursor.execute("DELETE FROM subscriptions WHERE plan_id = 5 OR user_id = %s", [sid("u", 9)])
            cursor.execute("DELETE FROM users WHERE id = %s", [sid("u", 9)])
            cursor.execute("DELETE FROM plans WHERE id = 5")
        dry = self.run_import(dry_run=True)
        self.assertEqual(dry.banner, "warning")
        self.assertIn("2 live Stripe subscriptions were skipped because their NexaCloud user is soft-deleted: "
                      "Stripe still bills them 34.83 CAD a month", dry.banner_message)

    @freeze_time("2026-11-25 09:00:00")  # after the import (Nov 10) and November's reconciliation
    def test_cutover_shows_the_figures_by_reason_and_wants_real_differences_acknowledged(self):
        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).action_switch_to_live()
        action = self.service.with_user(self.billing_admin).action_switch_to_live()
        wizard = self.env[action["res_model"]].with_user(self.billing_admin).with_context(action["context"]).create({})
        self.assertEqual(wizard.run_id, self.summary["run"])
        self.assertEqual((wizard.match_count, wizard.real_count, wizard.timing_count), (5, 14, 5))
        self.assertEqual(wizard.line_ids, self.summary["run"].line_ids)
        self.assertTrue(wizard.needs_acknowledgement)
        with self.assertRaisesRegex(UserError, "14 real differences"):
            wizard.action_confirm()
        self.assertEqual(self.service.billing_mode, "shadow")
        wizard.acknowledged = True
        wizard.action_confirm()
        self.assertEqual(self.service.billing_mode, "live")
        note = self.service.message_ids[0].body
        self.assertIn("5 match, 14 real differences", note)
        self.assertIn("Not imported: user deleted in the app, Stripe still bills: 2 (209.00 CAD)", note)
        self.assertIn(f"{self.billing_admin.name} acknowledged: 14 real differences", note)
        orders = self.env["sale.order"].search([("x_fc_service_id", "=", self.service.id)])
        self.assertEqual(set(orders.mapped("state")), {"draft"}, "going live confirms nothing by itself")

        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).action_activate_subscriptions()
        # Those whose Date of Next Invoice has passed (e.g. s13 renewed on Nov 3, s14 and s21 on Nov 20):
        # Stripe billed that renewal since the import, so they wait for a new import.
        stale = orders.filtered(lambda o: o.next_invoice_date and o.next_invoice_date < date(2026, 11, 25))
        self.activate_subscriptions()
        self.assertLessEqual({sid("s", 13), sid("s", 14), sid("s", 21)}, set(stale.mapped("x_fc_external_id")))
        self.assertEqual((set(stale.mapped("state")), set((orders - stale).mapped("state"))), ({"draft"}, {"sale"}))
        self.assertIn(f"{len(stale)} left as drafts: their Date of Next Invoice has passed",
                      self.service.message_ids[0].body)
        orders -= stale
        first = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 1))
        self.assertEqual((first.order_line.product_id, first.amount_untaxed),
                         (first.plan_id.x_fc_product_id, 19.0))
        self.assertFalse(orders.filtered("payment_token_id"), "no customer has a saved payment method in Odoo")
        self.assertIn(f"{len(orders)} subscriptions confirmed", self.service.message_ids[0].body)
        self.activate_subscriptions()
        self.assertIn("0 subscriptions confirmed", self.service.message_ids[0].body)

        self.service.with_user(self.billing_admin).action_switch_to_shadow()
        self.assertEqual(self.service.billing_mode, "shadow")
        self.assertIn("Switched back to shadow", self.service.message_ids[0].body)

    def test_activation_refused_in_shadow(self):
        with self.assertRaises(UserError):
            self.service.with_user(self.billing_admin).action_activate_subscriptions()


@tagged("post_install", "-at_install")
class TestReconciliationWhereOdooBillsWhatTheAppBilled(NexacloudSourceCase):
    """A source whose every subscription Odoo bills exactly as Stripe does: every row is a match."""

    SUBSCRIPTIONS = [  # (n, plan, status, current_period_start, current_period_end, created_at, canceled_at, cancel at end)
        (1, 1, "active", "2026-11-03 09:30+00", "2026-12-03 09:30+00", "2025-06-03 09:30+00", None, False),
        (2, 1, "past_due", "2026-10-25", "2026-11-25", "2025-01-25", None, False),   # renews later in the month
        (3, 2, "unpaid", "2025-11-20", "2026-11-20", "2024-11-20", None, False),     # yearly, renews in November
        (4, 2, "paused", "2026-03-03", "2027-03-03", "2025-03-03", None, False),     # yearly, no renewal: 0 and 0
        (5, 4, "active", "2026-11-15", "2026-12-15", "2026-01-15", None, False),     # in USD
        (6, 1, "active", "2026-10-25", "2026-11-25", "2026-01-25", "2026-10-26", True),  # ends at its period's end
        (7, 1, "active", "2026-10-31", "2026-11-30", "2026-01-31", None, False),     # month-end anchor
        (8, 2, "active", "2026-11-01", "2027-11-01", "2026-11-01", None, False),     # yearly, starts in November
        (9, 1, "trialing", "2026-11-10", "2026-11-24", "2026-11-10", None, False),   # first charged when its trial ends
        (10, 1, "trialing", "2026-11-05", "2026-12-05", "2026-11-05", None, False),  # a 30-day trial: nothing yet
        (11, 2, "trialing", "2026-10-20", "2026-11-03", "2026-10-20", None, False),  # yearly, trial from October
        (12, 1, "trialing", "2026-11-10", "2026-11-24", "2026-11-10", None, True),   # a trial that ends unpaid
        (13, 1, "incomplete", "2026-11-20", "2026-12-20", "2026-11-20", None, False),  # first payment failed
        (14, 2, "active", None, "2026-11-03", "2025-02-10", None, False),   # off its start date's grid (Nov 3)
    ]

    def setUp(self):
        super().setUp()
        with self.source_cursor() as cursor:
            cursor.execute("DELETE FROM deployments; DELETE FROM subscriptions; DELETE FROM users "
                           "WHERE email IN ('not-an-email', 'carol@example.com'); DELETE FROM plans WHERE id = 5")
            for n, plan, status, start, end, created, canceled, at_end in self.SUBSCRIPTIONS:
                cursor.execute("""
                    INSERT INTO subscriptions (id, user_id, plan_id, status, current_period_start, current_period_end,
                                               created_at, canceled_at, cancel_at_period_end)
                    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)""",
                               (sid("s", n), sid("u", n % 3 + 1), plan, status, start, end, created, canceled, at_end))
        self.run_import()

    def test_every_row_is_a_match(self):
        summary = self.env["fusion.billing.reconciliation"]._run(
            self.service, *NOVEMBER, self.service._fc_source_bills(*NOVEMBER))
        rows = self.env["fusion.billing.reconciliation"].search([("service_id", "=", self.service.id)])
        self.assertEqual({row.external_subscription_id: (row.state, row.odoo_amount) for row in rows}, {
            sid("s", 1): ("match", 19.0), sid("s", 2): ("match", 19.0), sid("s", 3): ("match", 190.0),
            sid("s", 4): ("match", 0.0), sid("s", 5): ("match", 25.0), sid("s", 6): ("match", 0.0),
            sid("s", 7): ("match", 19.0), sid("s", 8): ("match", 190.0), sid("s", 9): ("match", 19.0),
            sid("s", 10): ("match", 0.0), sid("s", 11): ("match", 190.0), sid("s", 12): ("match", 0.0),
            sid("s", 13): ("match", 0.0), sid("s", 14): ("match", 190.0)})
        self.assertEqual((summary["counts"], summary["reasons"]), ({"match": 14}, {}))
        self.assertEqual(sum(rows.mapped("app_amount")), 19 * 4 + 190 * 4 + 25)
        orders = self.env["sale.order"].search([("x_fc_service_id", "=", self.service.id)])
        self.assertNotIn(sid("s", 13), orders.mapped("x_fc_external_id"), "an incomplete subscription is skipped")
        with freeze_time("2026-12-02"):  # November is the last month
            wizard = self.env["fusion.billing.cutover.wizard"].with_user(self.billing_admin).create(
                {"service_id": self.service.id})
            self.assertFalse(wizard.needs_acknowledgement, "nothing to acknowledge when every row matches")
            wizard.action_confirm()
        self.assertEqual(self.service.billing_mode, "live")


@tagged("post_install", "-at_install")
class TestReconciliationFollowsTheBillingGrid(FusionBillingCase):
    """Odoo's side is the order's own billing periods: the grid of its Date of Next Invoice (``_fc_anchor``),
    where its usage is recorded, not anniversaries of its start date."""

    def test_usage_of_a_subscription_whose_grid_is_not_its_start_date(self):
        order = self._create_subscription(external_id="off-grid", start_date=date(2026, 10, 15),
                                          next_invoice_date=date(2026, 11, 1))
        self.assertEqual((order._fc_start(), order._fc_anchor()), (date(2026, 10, 15), date(2026, 10, 1)))
        period = order._fc_period(datetime(2026, 11, 10))
        self.assertEqual(period, NOVEMBER, "its usage periods follow the invoices: Nov 1 to Dec 1")
        self.env["fusion.billing.usage"].create({  # 300 GB: 200 above the quota at 0.05 = 10.00
            "subscription_id": order.id, "metric_id": self.metric_bandwidth.id, "period_start": period[0],
            "period_end": period[1], "quantity": 300, "events_count": 3})
        Recon = self.env["fusion.billing.reconciliation"]
        Recon._api_report(self.service, [{"external_subscription_id": "off-grid", "period_start": "2026-11-01",
                                          "period_end": "2026-12-01", "base_fee_cents": 4900,
                                          "usage": {"bandwidth_gb": 1000}}])
        Recon._run(self.service, *NOVEMBER)
        row = Recon.search([("service_id", "=", self.service.id), ("external_subscription_id", "=", "off-grid")])
        self.assertEqual((row.state, row.reason, row.odoo_amount, row.app_amount), ("match", False, 59.0, 59.0))
        # October: nothing before its start (Oct 15), and its first invoice is on Nov 1.
        Recon._run(self.service, date(2026, 10, 1), NOVEMBER[0])
        october = Recon.search([("service_id", "=", self.service.id), ("period_start", "=", date(2026, 10, 1))])
        self.assertEqual((october.state, october.odoo_amount), ("match", 0.0), "neither side bills it in October")


@tagged("post_install", "-at_install")
class TestDailyReconciliationIsolation(FusionBillingCase):
    """The daily job reconciles each shadow service on its own: a service whose run fails is rolled back
    and reported, the others are reconciled; a malformed bill becomes one row that says so."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.first = date.today().replace(day=1)
        cls.previous = periods.add_period(cls.first, "month", 1, -1)
        cls.services = {}
        for code in ("nexadesk", "nexamaps"):
            service = cls._create_service(code.capitalize(), code)
            plan = cls.env["sale.subscription.plan"].create({
                "name": f"{code} plan", "billing_period_value": 1, "billing_period_unit": "month",
                "x_fc_service_id": service.id, "x_fc_plan_code": f"{code}-pro", "x_fc_amount": 30.0,
                "x_fc_product_id": cls.base_product.id})
            for n in range(3):
                cls._create_subscription(plan=plan, service=service, external_id=f"{code}-{n}",
                                         start_date=cls.previous)
            cls.services[code] = service
        cls._create_service("Live app", "liveapp", billing_mode="live")

    def report(self, service, key, **values):
        self.env["fusion.billing.reconciliation"]._api_report(service, [dict({
            "external_subscription_id": key, "period_start": str(self.previous), "period_end": str(self.first),
            "base_fee_cents": 3000}, **values)])

    def rows(self, service):
        return {row.external_subscription_id: row for row in self.env["fusion.billing.reconciliation"].search(
            [("service_id", "=", service.id), ("period_start", "=", self.previous)])}

    def test_one_poisoned_record_among_good_ones(self):
        desk, maps = self.services["nexadesk"], self.services["nexamaps"]
        for n in range(3):
            self.report(desk, f"nexadesk-{n}")
            self.report(maps, f"nexamaps-{n}")
        self.rows(desk)["nexadesk-1"].app_reported = {"base_fee_cents": "thirty"}  # a malformed bill
        # NexaCloud's source is unreachable: its whole run fails.
        self.env["ir.config_parameter"].sudo().set_param(
            "fusion_billing.nexacloud_dsn", "host=127.0.0.1 port=1 dbname=gone connect_timeout=2")
        Recon = self.env["fusion.billing.reconciliation"]
        Run = self.env["fusion.billing.reconciliation.run"]
        with mute_logger("odoo.addons.fusion_centralize_billing.models.fusion_billing_reconciliation"):
            Recon._cron_reconcile_shadow_services()

        self.assertEqual({key: (row.state, row.reason) for key, row in self.rows(desk).items()}, {
            "nexadesk-0": ("match", False), "nexadesk-1": ("error", "error"), "nexadesk-2": ("match", False)})
        self.assertIn("its reported bill is malformed", self.rows(desk)["nexadesk-1"].explanation)
        self.assertEqual({row.state for row in self.rows(maps).values()}, {"match"})
        self.assertEqual((desk.last_reconciliation_run_id.state, maps.last_reconciliation_run_id.state),
                         ("done", "done"))
        failed = self.service.last_reconciliation_run_id
        self.assertEqual((failed.state, failed.period_start), ("failed", self.previous))
        self.assertIn("Cannot read NexaCloud", failed.error)
        self.assertFalse(self.rows(self.service), "the failed service's run left nothing half-written")
        self.assertIn("failed and was rolled back", self.service.message_ids[0].body)
        attention = self.env.ref("fusion_centralize_billing.fusion_billing_reconciliation_run_action_attention")
        self.assertIn("search_default_failed", attention.context)
        self.assertEqual(Run.search([("state", "=", "failed")]), failed, "listed under Needs Attention")
        self.assertFalse(self.env["fusion.billing.service"].search([("code", "=", "liveapp")]).reconciliation_run_ids)

        # The job does not retry the same failing month forever; the other services go on every day.
        with mute_logger("odoo.addons.fusion_centralize_billing.models.fusion_billing_reconciliation"):
            for _day in range(4):
                Recon._cron_reconcile_shadow_services()
        self.assertEqual(Run.search_count([("service_id", "=", self.service.id), ("state", "=", "failed")]), 3)
        self.assertEqual(Run.search_count([("service_id", "=", desk.id), ("state", "=", "done")]), 5)

        # Once the cause is fixed, a person reconciles it again (and the daily job would too).
        self.env["ir.config_parameter"].sudo().set_param("fusion_billing.nexacloud_dsn", "")
        self.service.with_user(self.billing_user).action_reconcile_last_month()
        self.assertEqual(self.service.last_reconciliation_run_id.state, "done")
        self.assertEqual(Run._fc_failures_since_success(self.service, self.previous), 0)


@tagged("post_install", "-at_install")
class TestConcurrentReconciliation(FusionBillingCase):
    """The daily job and a person pressing Reconcile at the same moment, as two real Odoo workers."""

    def test_two_workers_reconciling_one_service_at_once(self):
        start, end = NOVEMBER
        with real_session(self.env) as env:  # committed, so that both sessions see it
            service = env["fusion.billing.service"].create({"name": "Recon workers", "code": "recon_workers"})
            product = env["product.product"].create({"name": "Recon workers plan", "type": "service",
                                                     "recurring_invoice": True})
            plan = env["sale.subscription.plan"].create({
                "name": "Recon workers", "x_fc_service_id": service.id, "x_fc_plan_code": "recon-workers",
                "x_fc_amount": 10, "x_fc_product_id": product.id})
            partner = env["res.partner"].create({"name": "Recon workers client"})
            orders = env["sale.order"].create([{
                "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": f"rw-{n}", "pricelist_id": service._fc_pricelist().id, "start_date": start}
                for n in range(40)])
            env["fusion.billing.reconciliation"]._api_report(service, [{
                "external_subscription_id": f"rw-{n}", "period_start": str(start), "period_end": str(end),
                "base_fee_cents": 1000 if n % 2 else 1200} for n in range(40)])
            ids = {"service": service.id, "orders": orders.ids, "plan": plan.id, "product": product.id,
                   "partner": partner.id}
        self.addCleanup(self._remove_committed, ids)

        errors = run_as_workers(self.env, lambda env: env["fusion.billing.reconciliation"]._run(
            env["fusion.billing.service"].browse(ids["service"]), start, end))
        self.assertTrue(all(isinstance(error, UserError) and "already running" in str(error) for error in errors),
                        errors)
        with real_session(self.env) as env:
            rows = env["fusion.billing.reconciliation"].search([("service_id", "=", ids["service"])])
            runs = env["fusion.billing.reconciliation.run"].search([("service_id", "=", ids["service"])])
            self.assertEqual(len(runs), 2 - len(errors), "each run that went through is recorded once")
            self.assertEqual(len(rows), 40, "one row per subscription, never two")
            self.assertEqual(set(rows.mapped("run_count")), {len(runs)})
            self.assertEqual(sorted(rows.mapped("state")), ["match"] * 20 + ["mismatch"] * 20)
            self.assertEqual(set(rows.filtered(lambda row: row.state == "mismatch").mapped("reason")),
                             {"price_differs"})

    def _remove_committed(self, ids):
        with real_session(self.env) as env:
            cr = env.cr
            cr.execute("DELETE FROM fusion_billing_reconciliation WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM fusion_billing_reconciliation_run WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM sale_order WHERE id IN %s", [tuple(ids["orders"])])
            env["sale.subscription.plan"].browse(ids["plan"]).unlink()
            env["product.product"].browse(ids["product"]).unlink()
            env["res.partner"].browse(ids["partner"]).unlink()
            env["fusion.billing.service"].browse(ids["service"]).unlink()


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


@tagged("post_install", "-at_install")
class TestCutoverNeedsLastMonthReconciled(FusionBillingCase):
    """Switch to Live clears without an acknowledgement only on a clean reconciliation of the last month
    that is also the latest attempt: never on older figures shown because the latest attempt failed or
    the last month was not reconciled."""

    def reconciled(self, month, run_at, state="done", real=0):
        return self.env["fusion.billing.reconciliation.run"].create({
            "service_id": self.service.id, "period_start": month, "period_end": periods.add_period(month, "month", 1),
            "run_at": run_at, "state": state, "row_count": 10, "match_count": 10 - real, "real_count": real,
            "error": "The source database is unreachable." if state == "failed" else False})

    def wizard(self):
        return self.env["fusion.billing.cutover.wizard"].with_user(self.billing_admin).create(
            {"service_id": self.service.id})

    def test_older_figures_are_never_a_clean_reconciliation(self):
        with freeze_time("2026-12-05 10:00:00"):
            november = self.reconciled(date(2026, 11, 1), "2026-12-01 02:00:00")
            self.assertFalse(self.wizard().needs_acknowledgement, "November, the last month, all matches")
            self.reconciled(date(2026, 11, 1), "2026-12-02 02:00:00", state="failed")
            failed = self.wizard()
            self.assertEqual((failed.run_id, failed.last_attempt_failed, failed.needs_acknowledgement),
                             (november, True, True))
            with self.assertRaisesRegex(UserError, "the latest reconciliation attempt failed"):
                failed.action_confirm()
        self.assertEqual(self.service.billing_mode, "shadow")

        with freeze_time("2027-01-10 10:00:00"):
            self.reconciled(date(2026, 11, 1), "2027-01-02 02:00:00")  # November again; December never
            outdated = self.wizard()
            self.assertEqual((outdated.last_attempt_failed, outdated.run_outdated), (False, True))
            with self.assertRaisesRegex(UserError, r"the last month was not reconciled \(the latest figures are for "
                                                   r"2026-11-01\)"):
                outdated.action_confirm()
            self.assertEqual(self.service.billing_mode, "shadow")
            outdated.acknowledged = True
            outdated.action_confirm()
        self.assertEqual(self.service.billing_mode, "live")
        self.assertIn("acknowledged: the last month was not reconciled", self.service.message_ids[0].body)
