"""The NexaCloud import wizard end to end, against a real source database on the same server."""
from unittest.mock import patch
from urllib.parse import quote

import psycopg2
from psycopg2.extensions import make_dsn

from odoo.exceptions import AccessError, UserError, ValidationError
from odoo.sql_db import db_connect
from odoo.tests import tagged

from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid
from odoo.addons.fusion_centralize_billing.services.nexacloud_import import IMPORT_LOCK, ImportRun

from .common import NexacloudSourceCase


@tagged("post_install", "-at_install")
class TestNexacloudImport(NexacloudSourceCase):

    def wizard(self, user=None, dry_run=False):
        return self.env["fusion.billing.nexacloud.import"].with_user(user or self.billing_admin).create(
            {"dry_run": dry_run})

    def imported_orders(self):
        return self.env["sale.order"].search([("x_fc_service_id", "=", self.service.id)])

    def odoo_snapshot(self):
        models = ("res.partner", "fusion.billing.account.link", "sale.order", "sale.order.line",
                  "sale.subscription.plan", "fusion.billing.charge", "fusion.billing.metric", "fusion.billing.usage",
                  "product.product", "fusion.billing.service", "product.pricelist", "fusion.billing.webhook",
                  "mail.message", "mail.mail", "account.move", "payment.token")
        self.env.invalidate_all()
        snapshot = {}
        for model in models:
            records = self.env[model].sudo().with_context(active_test=False)
            stored = [name for name, field in records._fields.items() if field.store and field.type != "binary"]
            snapshot[model] = records.search_read([], stored, order="id")
        return snapshot

    def setUpRunCapture(self):
        original = ImportRun.run
        test = self

        def run(run_self, source):
            result = original(run_self, source)
            test._last_run = result
            return result
        return patch.object(ImportRun, "run", run)

    # ------------------------------------------------------------------ Test Connection
    def test_test_connection_reports_server_role_tables_and_counts(self):
        wizard = self.wizard()
        wizard.action_test_connection()
        report = wizard.connection_report
        self.assertIn("Reachable.", report)
        self.assertIn(self.role, report)
        self.assertIn("Least privilege", report)
        for table, rows in (("users", 9), ("plans", 5), ("subscriptions", 11), ("deployments", 9)):
            self.assertIn(f"<code>{table}</code></td><td class='text-end'>{rows}</td>", report)
        self.assertNotIn(self.password, report)
        self.assertFalse(self.imported_orders())

    def test_test_connection_names_a_missing_column_and_a_missing_grant(self):
        self.admin_sql(f'ALTER TABLE subscriptions DROP COLUMN status; REVOKE SELECT ON deployments FROM "{self.role}"')
        wizard = self.wizard()
        wizard.action_test_connection()
        self.assertIn("Reachable, but not importable.", wizard.connection_report)
        self.assertIn("missing required columns: status", wizard.connection_report)
        self.assertIn("permission denied", wizard.connection_report)
        with self.assertRaisesRegex(UserError, "subscriptions: status"):
            wizard.action_run_import()

    def test_test_connection_explains_a_bad_password_without_showing_it(self):
        self.set_dsn(make_dsn(self.ro_dsn, password="Wr0ng-Secret-42"))
        wizard = self.wizard()
        wizard.action_test_connection()
        self.assertIn("bad user name or password", wizard.connection_report)
        self.assertNotIn("Wr0ng-Secret-42", wizard.connection_report + (wizard.source_display or ""))
        with self.assertRaises(UserError) as error:
            wizard.action_run_import()
        self.assertNotIn("Wr0ng-Secret-42", str(error.exception))

    def test_sqlalchemy_url_is_accepted_with_a_visible_note(self):
        params = psycopg2.extensions.parse_dsn(self.ro_dsn)
        self.set_dsn(f"postgresql+asyncpg://{self.role}:{quote(self.password, safe='')}@{params['host']}:"
                     f"{params['port']}/{self.database}")
        wizard = self.wizard()
        self.assertIn("+asyncpg", wizard.source_display)
        self.assertNotIn(quote(self.password, safe=""), wizard.source_display)
        wizard.action_test_connection()
        self.assertIn("Reachable.", wizard.connection_report)

    def test_missing_dsn_is_a_readable_error(self):
        self.set_dsn("")
        with self.assertRaisesRegex(UserError, "fusion_billing.nexacloud_dsn"):
            self.wizard().action_test_connection()

    # ------------------------------------------------------------------ dry run
    def test_dry_run_reports_everything_and_leaves_odoo_unchanged(self):
        before = self.odoo_snapshot()
        source_before = self.source_snapshot()
        with self.setUpRunCapture():
            wizard = self.run_import(dry_run=True)
        self.assertEqual(self.odoo_snapshot(), before)
        self.assertEqual(self.source_snapshot(), source_before)
        self.assertEqual(wizard.banner, "danger")
        self.assertIn("Dry run", wizard.banner_message)
        counts = self._last_run.counts
        self.assertEqual(counts["subscriptions"], {"created": 5, "updated": 0, "unchanged": 0, "skipped": 4, "failed": 2})
        self.assertEqual(counts["account_links"]["created"], 7)
        self.assertEqual(counts["partners"]["created"], 5)  # bob twice, Dana already known
        failed = wizard.line_ids.filtered(lambda l: l.outcome == "failed")
        self.assertEqual(set(failed.mapped("source_id")), {sid("u", 9), "5", sid("s", 10), sid("s", 11)})
        self.assertIn("not-an-email", failed.filtered(lambda l: l.source_id == sid("u", 9)).reason)

    def test_plain_users_may_dry_run_but_not_import_for_real(self):
        with self.assertRaises(AccessError):
            self.run_import(user=self.billing_user)
        run = self.run_import(dry_run=True, user=self.billing_user)
        self.assertTrue(run.finished_at)
        self.assertFalse(self.imported_orders())

    def test_a_second_concurrent_import_is_refused(self):
        other = db_connect(self.env.cr.dbname).cursor()
        try:
            other.execute("SELECT pg_advisory_xact_lock(%s)", [IMPORT_LOCK])
            with self.assertRaisesRegex(UserError, "already running"):
                self.run_import(dry_run=True)
        finally:
            other.rollback()
            other.close()

    def test_a_second_queued_import_is_refused_and_a_failing_run_is_reported(self):
        first = self.wizard(dry_run=True)
        first.action_run_import()
        with self.assertRaisesRegex(UserError, "already queued or running"):
            self.wizard(dry_run=True).action_run_import()
        self.admin_sql("ALTER TABLE deployments DROP COLUMN vcpu")  # the source changes before the job runs
        self.env["fusion.billing.import.run"]._cron_run_queued()
        self.assertEqual(first.run_id.state, "failed")
        self.assertIn("deployments: vcpu", first.run_id.error)
        self.assertFalse(self.imported_orders())

    def test_a_run_that_died_does_not_block_the_next_one(self):
        dead = self.env["fusion.billing.import.run"].with_user(self.billing_admin)._create_queued(True)
        dead.sudo().state = "running"  # its worker was killed: the state stayed, its transaction (and lock) did not
        self.run_import(dry_run=True)
        self.assertEqual(dead.state, "failed")
        self.assertIn("Interrupted", dead.error)

    # ------------------------------------------------------------------ real run
    def test_real_run_is_shadow_safe_and_complete(self):
        source_before = self.source_snapshot()
        mails_before = self.env["mail.mail"].sudo().search_count([])
        with self.setUpRunCapture():
            wizard = self.run_import()
        self.assertEqual(self.source_snapshot(), source_before)
        self.assertEqual(wizard.banner, "danger")
        self.assertEqual(wizard.failed_count, 4)

        orders = self.imported_orders()
        self.assertEqual(len(orders), 5)
        self.assertEqual(set(orders.mapped("state")), {"draft"})
        self.assertFalse(orders.filtered("payment_token_id"))
        self.assertFalse(orders.invoice_ids)
        self.assertFalse(self.env["payment.token"].sudo().search([]).filtered(
            lambda t: t.partner_id in orders.partner_id))
        self.assertFalse(self.env["fusion.billing.webhook"].sudo().search([("service_id", "=", self.service.id)]))
        self.assertEqual(self.env["mail.mail"].sudo().search_count([]), mails_before)

        first = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 1))
        self.assertEqual(first.x_fc_stripe_subscription_id, "sub_1")
        self.assertEqual(first.x_fc_source_status, "active")
        self.assertEqual(first.plan_id.x_fc_plan_code, "starter")
        self.assertEqual(first.plan_id.x_fc_amount, 19.0)
        self.assertEqual((first.order_line.product_id, first.order_line.price_unit, first.amount_untaxed),
                         (first.plan_id.x_fc_product_id, 19.0, 19.0),
                         "the draft shows its plan's price (not billable: never confirmed in shadow)")
        self.assertEqual(str(first.start_date), "2026-11-01")
        self.assertFalse(first.x_fc_trial_end)
        usd = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 5))
        self.assertEqual(usd.currency_id.name, "USD")
        # Bob's yearly trial (Nov 1 to Dec 1): Odoo bills it from the end of its trial, Stripe's first charge.
        trial = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 2))
        self.assertEqual((trial.x_fc_source_status, str(trial.start_date), str(trial.x_fc_trial_end),
                          str(trial.next_invoice_date)), ("trialing", "2026-11-01", "2026-12-01", "2026-12-01"))
        # Dana's incomplete subscription (its first payment never went through): Stripe bills nothing, not imported.
        self.assertNotIn(sid("s", 8), orders.mapped("x_fc_external_id"))

        plans = self.env["sale.subscription.plan"].search([("x_fc_service_id", "=", self.service.id),
                                                           ("x_fc_plan_code", "in", ("starter", "legacy", "pro-annual"))])
        self.assertEqual(len(plans), 3)
        self.assertFalse(plans.filtered(lambda p: p.x_fc_plan_code == "legacy").x_fc_source_active)
        self.assertEqual(plans.filtered(lambda p: p.x_fc_plan_code == "pro-annual").billing_period_unit, "year")
        charges = self.env["fusion.billing.charge"].search([("service_id", "=", self.service.id),
                                                            ("plan_code", "=", "starter")])
        self.assertEqual(len(charges), 4)
        self.assertFalse(charges.plan_id)
        self.assertEqual(sorted(charges.mapped("included_quantity")), [1, 25, 100, 1024])

        links = self.env["fusion.billing.account.link"].search([("service_id", "=", self.service.id)])
        self.assertEqual(len(links), 7)
        bob = links.filtered(lambda l: l.external_id in (sid("u", 2), sid("u", 3)))
        self.assertEqual(len(bob.partner_id), 1)
        self.assertEqual(bob.partner_id.name, "Bob's Bakery Ltd.")
        dana = links.filtered(lambda l: l.external_id == sid("u", 8))
        self.assertEqual(dana.partner_id, self.desk_partner)
        self.assertEqual(self.desk_partner.name, "Dana (NexaDesk)")
        self.assertEqual(links.filtered(lambda l: l.external_id == sid("u", 1)).stripe_customer_id, "cus_A1")
        self.assertEqual(self.env["res.partner"].search_count([("email", "=ilike", "bob@example.com")]), 1)

        usage = self.env["fusion.billing.usage"].search([("subscription_id", "=", first.id)])
        self.assertEqual({u.metric_id.code: u.quantity for u in usage}, {"vcpu": 3, "ram_mb": 3072, "disk_gb": 70})
        self.assertEqual(set(usage.mapped("source")), {"import"})
        self.assertEqual(set(usage.mapped("partner_id")), {first.partner_id})

        reasons = {(l.source_id, l.outcome): l.reason for l in wizard.line_ids}
        self.assertEqual(reasons[(sid("s", 4), "skipped")], f"orphan: its user {sid('u', 4)} is soft-deleted")
        self.assertEqual(reasons[(sid("s", 8), "skipped")],
                         "never started in NexaCloud (incomplete: its first payment did not go through)")
        self.assertIn("Incomplete subscriptions skipped: 1 (their first payment never went through, so Stripe bills "
                      "them nothing; 19.00 CAD a month once started).", wizard.banner_message)
        self.assertIn("Trials imported: 1 (Odoo bills each from the end of its trial, when Stripe first charges it).",
                      wizard.banner_message)
        self.assertEqual(reasons[(sid("d", 4), "skipped")], "legacy deployment without a subscription")
        self.assertIn("USD", reasons[("4", "warning")])
        self.assertIn("same e-mail", reasons[(sid("u", 3), "warning")])
        self.assertIn("Import", self.service.message_ids[:1].body)

    def test_rerun_changes_nothing_then_follows_source_changes_without_deleting(self):
        self.run_import()
        before = self.odoo_snapshot()
        with self.setUpRunCapture():
            self.run_import()
        for entity, counts in self._last_run.counts.items():
            self.assertEqual((entity, counts["created"], counts["updated"]), (entity, 0, 0))
        after = self.odoo_snapshot()
        for model in ("res.partner", "fusion.billing.account.link", "sale.order", "sale.order.line",
                      "fusion.billing.charge", "fusion.billing.usage", "sale.subscription.plan"):
            self.assertEqual(after[model], before[model], model)

        self.admin_sql(f"""UPDATE plans SET price_cents = 2100 WHERE id = 1;
                           UPDATE users SET full_name = 'Alice Martin-Tremblay' WHERE id = '{sid("u", 1)}';
                           UPDATE deployments SET vcpu = 5 WHERE id = '{sid("d", 2)}';
                           DELETE FROM subscriptions WHERE id = '{sid("s", 3)}'""")
        with self.setUpRunCapture():
            wizard = self.run_import()
        counts = self._last_run.counts
        self.assertEqual(counts["plans"]["updated"], 1)
        self.assertEqual(counts["partners"]["updated"], 1)
        self.assertEqual(counts["usage_baselines"]["updated"], 1)
        self.assertEqual(sum(c["created"] for c in counts.values()), 0)
        alice = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 1))])
        self.assertEqual(alice.partner_id.name, "Alice Martin-Tremblay")
        gone = self.imported_orders().filtered(lambda o: o.x_fc_external_id == sid("s", 3))
        self.assertTrue(gone, "a row removed at the source is never deleted in Odoo")
        self.assertIn("no longer in NexaCloud", wizard.line_ids.filtered(lambda l: l.source_id == sid("s", 3)).reason)

    def test_a_draft_an_earlier_import_copied_from_an_incomplete_subscription_is_kept_and_listed(self):
        self.run_import()
        dana = self.env["fusion.billing.account.link"].search([("external_id", "=", sid("u", 8))])
        starter = self.env["sale.subscription.plan"].search([("x_fc_service_id", "=", self.service.id),
                                                             ("x_fc_plan_code", "=", "starter")])
        earlier = self._create_subscription(  # as the import copied incomplete rows before 19.0.1.2.0
            external_id=sid("s", 8), plan=starter, partner=dana.partner_id, x_fc_account_link_id=dana.id,
            x_fc_source_status="incomplete", start_date="2026-11-01", next_invoice_date="2026-12-01")
        run = self.run_import()
        warnings = run.line_ids.filtered(lambda l: l.source_id == sid("s", 8) and l.outcome == "warning")
        self.assertEqual(warnings.reason, "copied as a draft by an earlier import; Stripe does not bill it, so "
                                          "activation leaves it a draft")
        self.assertEqual((earlier.state, earlier.x_fc_source_status), ("draft", "incomplete"), "kept as it was")
        self.assertTrue(earlier._fc_never_billed())

    def test_one_bad_row_fails_alone(self):
        original = ImportRun._order_values

        def order_values(run, sub_id, wanted, plan):
            if sub_id == sid("s", 2):
                raise ValidationError("simulated bad row")
            return original(run, sub_id, wanted, plan)
        with patch.object(ImportRun, "_order_values", order_values), self.setUpRunCapture():
            wizard = self.run_import()
        self.assertEqual(self._last_run.counts["subscriptions"]["created"], 4)
        reasons = {l.source_id: l.reason for l in wizard.line_ids if l.outcome == "failed"}
        self.assertEqual(reasons[sid("s", 2)], "simulated bad row")
        self.assertIn("could not be imported", reasons[sid("d", 6)])
        self.assertEqual(len(self.imported_orders()), 4)

    def test_reported_rows_open_as_an_exportable_list(self):
        run = self.run_import(dry_run=True)
        action = run.action_open_lines()
        lines = self.env[action["res_model"]].search(action["domain"])
        self.assertEqual(lines, run.line_ids)
        self.assertTrue(lines.filtered(lambda l: l.outcome == "skipped"))
