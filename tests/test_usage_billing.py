import json
from datetime import date

from freezegun import freeze_time

from odoo import Command
from odoo.tests import tagged
from odoo.tools import mute_logger

from ..core import periods
from .common import FusionBillingCase, UsageBillingCase, committed_catalog, real_session, run_as_workers, ts


@tagged("post_install", "-at_install")
class TestUsageBilling(UsageBillingCase):
    """Usage pushed through the API, rated, and billed in arrears on the native recurring invoice, with HST."""

    def test_usage_is_rated_to_the_cent_and_billed_with_hst(self):
        order = self.subscribe()
        self.recurring("2025-01-01 03:00:00")
        self.push_january()
        with freeze_time("2025-01-25"):
            usage = order._fc_usage_values()
        # bandwidth 250 GB: 100 included, 150 × 0.05 = 7.50; 5 calls → 3 packages of 2 × 2.00 = 6.00
        self.assertEqual([c["amount_cents"] for c in usage["charges_usage"]], [750, 600])
        self.assertEqual((usage["amount_cents"], usage["taxes_amount_cents"]), (1350, 176))

        self.recurring("2025-02-01 06:00:00")
        invoice = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        lines = invoice.invoice_line_ids.filtered("x_fc_usage_id").sorted("price_subtotal", reverse=True)
        self.assertEqual(lines.mapped("price_subtotal"), [7.5, 6.0])
        self.assertEqual(lines.tax_ids, self.hst)
        self.assertEqual(lines.mapped("balance"), [-7.5, -6.0], "income credited in the company's CAD")
        self.assertEqual(invoice.line_ids.filtered(lambda l: l.display_type == "tax").balance, -8.13)
        self.assertEqual(invoice.line_ids.filtered(lambda l: l.display_type == "payment_term").balance, 70.63)
        self.assertEqual(invoice.currency_id.name, "CAD")
        self.assertTrue(all(line.sale_line_ids.order_id == order for line in lines), "sale links kept")

        # A late event for the billed period is kept and reported, not silently added.
        late = self.push("sub_jan", "late", (2025, 1, 31), 5)
        self.assertEqual(late["status"], "late")
        rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1))
        self.assertEqual(rows.filtered(lambda u: u.metric_id == self.metric_bandwidth).quantity, 250)

        listed = self.api("GET", "invoices", params={"external_customer_id": "cus_jan"}).json()
        self.assertEqual([(i["total_amount_cents"], i["taxes_amount_cents"], i["status"]) for i in listed["invoices"]],
                         [(7063, 813, "finalized"), (5537, 637, "finalized")])
        since = self.api("GET", "invoices", params={"external_customer_id": "cus_jan", "issuing_date_from": "2025-02-01",
                                                     "statuses[]": "finalized"}).json()["invoices"]
        self.assertEqual([i["lago_id"] for i in since], [str(invoice.id)])
        with freeze_time("2025-02-10"):
            past = self.api("GET", "customers/cus_jan/past_usage",
                            params={"external_subscription_id": "sub_jan", "periods_count": "1"}).json()["usage_periods"]
            junk = self.api("GET", "customers/cus_jan/past_usage",
                            params={"external_subscription_id": "sub_jan", "periods_count": "all"})
        self.assertEqual([(p["from_datetime"][:10], p["amount_cents"]) for p in past], [("2025-01-01", 1350)])
        self.assertEqual((junk.status_code, junk.json()["error_details"]), (422, {"periods_count": ["value_is_invalid"]}))
        downloaded = self.api("POST", f"invoices/{invoice.id}/download").json()["invoice"]
        self.assertIn("/my/invoices/", downloaded["file_url"])
        self.assertEqual(self.api("GET", "invoices/999999").status_code, 404)

    def _journal_of_january(self):
        """(untaxed, tax, total, usage line balances, receivable) of the invoice billing January's usage."""
        self.base_product.taxes_id = False  # only the usage lines' tax matters here
        order = self.subscribe()
        self.recurring("2025-01-01 03:00:00")
        self.push_january()
        self.recurring("2025-02-01 06:00:00")
        invoice = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        receivable = invoice.line_ids.filtered(lambda l: l.display_type == "payment_term")
        return (invoice.amount_untaxed, invoice.amount_tax, invoice.amount_total,
                sorted(invoice.invoice_line_ids.filtered("x_fc_usage_id").mapped("balance")), receivable.balance)

    def test_untaxed_usage_is_journalled_at_its_amount(self):
        self.usage_product.taxes_id = False  # e.g. a zero-rated export customer's product
        self.assertEqual(self._journal_of_january(), (62.5, 0.0, 62.5, [-7.5, -6.0], 62.5))

    def test_usage_priced_tax_included_is_journalled_net_of_tax(self):
        self.hst.price_include_override = "tax_included"
        self.assertEqual(self._journal_of_january(), (60.95, 1.55, 62.5, [-6.64, -5.31], 62.5))

    def test_period_close_logs_no_total_change_on_the_subscription(self):
        order = self.subscribe().with_context(tracking_disable=False)
        self.recurring("2025-01-01 03:00:00")
        self.push_january()
        self.env.cr.flush()  # tracking of the set-up is logged now
        messages = order.message_ids
        with freeze_time("2025-02-01 06:00:00"):
            order.env["sale.order"]._cron_recurring_create_invoice()
        self.env.cr.flush()  # ... and the close's, if any
        self.assertEqual(order.order_line.filtered("x_fc_line_kind").mapped("price_subtotal"), [7.5, 6.0])
        self.assertFalse((order.message_ids - messages).tracking_value_ids,
                         "usage lines and invoices record the close, not a tracked total on every subscription")

    def test_invoices_posted_together_each_link_their_pdf_with_their_own_portal_token(self):
        orders = self.subscribe("sub_a", "cus_a") | self.subscribe("sub_b", "cus_b")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_a")
        self.push_january("sub_b", prefix="b-")
        self.recurring("2025-02-01 06:00:00")  # one run posts both invoices at once
        invoices = orders.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        self.assertEqual(len(invoices), 2)
        tokens = invoices.mapped("access_token")
        self.assertTrue(all(tokens) and len(set(tokens)) == 2, "each invoice its own token")
        webhooks = self.env["fusion.billing.webhook"].search([
            ("event_type", "=", "invoice.created"), ("object_ref", "in", [f"account.move,{i.id}" for i in invoices])])
        self.assertEqual(len(webhooks), 2, "one invoice.created per invoice")
        for webhook in webhooks:
            invoice = self.env["account.move"].browse(int(webhook.object_ref.split(",")[1]))
            file_url = json.loads(webhook.payload)["invoice"]["file_url"]
            self.assertIn(f"/my/invoices/{invoice.id}?access_token={invoice.access_token}", file_url)
            self.assertEqual(invoice._portal_ensure_token(), invoice.access_token, "the portal keeps that token")
            self.authenticate(None, None)
            response = self.url_open(f"/my/invoices/{invoice.id}?access_token={invoice.access_token}&report_type=html")
            self.assertEqual(response.status_code, 200, "the link opens the invoice without a login")
            self.assertIn(invoice.name, response.text)

    def test_analytic_distribution_models_apply_to_usage_lines_of_the_recurring_run(self):
        plan = self.env["account.analytic.plan"].create({"name": "Apps"})
        account = self.env["account.analytic.account"].create({"name": "NexaCloud", "plan_id": plan.id})
        self.env["account.analytic.distribution.model"].create({
            "product_id": self.usage_product.id, "analytic_distribution": {str(account.id): 100}})
        order = self.subscribe()
        self.recurring("2025-01-01 03:00:00")
        self.push_january()
        self.recurring("2025-02-01 06:00:00")
        usage_lines = order.order_line.filtered("x_fc_line_kind")
        self.assertEqual(len(usage_lines), 2)
        self.assertEqual(usage_lines.mapped("analytic_distribution"), [{str(account.id): 100}] * 2)
        invoice = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        billed = invoice.invoice_line_ids.filtered("x_fc_usage_id")
        self.assertEqual(billed.mapped("analytic_distribution"), [{str(account.id): 100}] * 2)
        fee = invoice.invoice_line_ids - billed
        self.assertFalse(fee.analytic_distribution, "the model is for the usage product only")

    def test_shadow_mode_records_everything_and_creates_nothing_postable(self):
        self.service.billing_mode = "shadow"
        order = self.subscribe("sub_shadow")
        self.push_january("sub_shadow")
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 06:00:00")
        self.assertFalse(order.invoice_ids)
        self.assertEqual(order.state, "draft")
        rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1))
        self.assertEqual((set(rows.mapped("state")), sorted(rows.mapped("amount"))), ({"closed"}, [6.0, 7.5]))
        self.assertFalse(order.order_line.filtered("x_fc_line_kind"))
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 2, 1))

    def test_periods_without_usage_are_closed_too(self):
        order = self.subscribe("sub_quiet")
        for day in ("2025-01-01", "2025-02-01", "2025-03-01"):
            self.recurring(f"{day} 03:00:00")
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 3, 1))
        self.assertFalse(order.order_line.filtered("x_fc_line_kind"), "nothing to bill, no usage line")
        self.assertEqual(len(order.x_fc_usage_ids), 4, "two periods × two charges recorded at 0")
        self.assertEqual(order.invoice_ids.mapped("amount_untaxed"), [49.0] * 3)

    def test_unique_count_counts_distinct_values_across_batches_of_the_period(self):
        metric = self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": "Active users", "code": "active_users",
            "aggregation": "unique_count", "field_name": "user"})
        order = self.subscribe()
        for batch in (("ann", "bob", "ann"), ("bob", "cyd")):
            events = [{"transaction_id": f"u-{len(batch)}-{i}", "external_subscription_id": "sub_jan",
                       "code": "active_users", "timestamp": ts(2025, 1, 5 + i), "properties": {"user": user}}
                      for i, user in enumerate(batch)]
            self.assertEqual(self.api("POST", "events/batch", {"events": events}).status_code, 200)
        february = {"transaction_id": "u-feb", "external_subscription_id": "sub_jan", "code": "active_users",
                    "timestamp": ts(2025, 2, 2), "properties": {"user": "dee"}}
        self.assertEqual(self.api("POST", "events", {"event": february}).status_code, 200)
        live = self.env["fusion.billing.usage"]._fc_live_totals(order, date(2025, 1, 1))
        self.assertEqual(live[metric.id], (3, 5), "readers count the events not folded yet")
        self.env["fusion.billing.usage"]._fc_fold(order.ids)  # as the period close does first
        usage = order.x_fc_usage_ids.filtered(lambda u: u.metric_id == metric).sorted("period_start")
        self.assertEqual([(str(u.period_start), u.quantity, u.events_count) for u in usage],
                         [("2025-01-01", 3.0, 5), ("2025-02-01", 1.0, 1)])


@tagged("post_install", "-at_install")
class TestRecurringRunWorkers(FusionBillingCase):
    """Odoo's recurring run (with the usage close in front of it) run by two real database sessions
    at once, as two workers or cron threads would."""

    def test_two_workers_bill_each_subscription_exactly_once(self):
        this_month = date.today().replace(day=1)
        start = periods.add_period(this_month, "month", 1, -1)
        with real_session(self.env) as env:  # committed, so that both sessions see it
            service, metric, product, plan = committed_catalog(env, "Close workers", billing_mode="live")
            partners = env["res.partner"].create([{"name": f"Close client {n}"} for n in range(6)])
            orders = env["sale.order"].create([{
                "partner_id": partners[n % 6].id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": f"close-{n}", "pricelist_id": service._fc_pricelist().id, "start_date": start,
                "order_line": [Command.create(plan._fc_base_fee_line_values())]} for n in range(30)])
            orders.action_confirm()
            orders.write({"next_invoice_date": this_month, "last_invoice_date": start})
            env["fusion.billing.usage"].create([{
                "subscription_id": order.id, "metric_id": metric.id, "period_start": start, "period_end": this_month,
                "quantity": n + 1} for n, order in enumerate(orders)])
            ids = {"service": service.id, "orders": orders.ids, "partners": partners.ids,
                   "catalog": [(plan._name, plan.id), (product._name, product.id)]}
        self.addCleanup(self._remove_committed, ids)

        # Two workers invoicing one new customer conflict on its rank or the journal: expected, and retried.
        with mute_logger("odoo.sql_db", "odoo.addons.fusion_centralize_billing.services.billing_cycle"):
            errors = run_as_workers(self.env, lambda env: env["sale.order"]._cron_recurring_create_invoice())
        self.assertEqual(errors, [], "a worker's conflict is retried, not raised")
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(ids["orders"])
            usage = orders.x_fc_usage_ids
            self.assertEqual(set(usage.mapped("state")), {"billed"})
            self.assertEqual(len(orders.order_line.filtered("x_fc_line_kind")), 30,
                             "one usage order line per subscription, none twice")
            lines = usage.invoice_line_id
            self.assertEqual(sorted(lines.mapped("price_subtotal")), [float(n + 1) for n in range(30)])
            moves = orders.invoice_ids
            self.assertEqual(len(moves), 30, "one invoice per subscription")
            self.assertEqual(set(moves.mapped("state")), {"posted"})
            self.assertEqual(len(set(moves.mapped("name"))), len(moves), "distinct invoice numbers")
            self.assertEqual(sorted(len(move.invoice_line_ids) for move in moves), [2] * 30, "fee and usage")
            self.assertEqual(set(orders.mapped("x_fc_usage_closed_until")), {this_month})
            self.assertEqual(set(orders.mapped("next_invoice_date")), {periods.add_period(this_month, "month", 1)})

    def _remove_committed(self, ids):
        """Delete what the test committed (directly: posted invoices cannot be deleted the ORM way)."""
        with real_session(self.env) as env:
            cr = env.cr
            cr.execute("DELETE FROM account_move WHERE x_fc_service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM fusion_billing_usage WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM sale_order WHERE id IN %s", [tuple(ids["orders"])])
            cr.execute("DELETE FROM fusion_billing_webhook WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM fusion_billing_charge WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM product_pricelist_item WHERE plan_id = %s",
                       [dict(ids["catalog"])["sale.subscription.plan"]])
            for model, record_id in ids["catalog"]:
                env[model].browse(record_id).unlink()
            env["fusion.billing.metric"].search([("service_id", "=", ids["service"])]).unlink()
            env["fusion.billing.service"].browse(ids["service"]).unlink()
            env["res.partner"].browse(ids["partners"]).unlink()
