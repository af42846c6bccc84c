from datetime import date, datetime, timezone

from freezegun import freeze_time

from odoo.tests import tagged
from odoo.tools import mute_logger

from ..core import periods
from .common import FusionBillingApiCase, FusionBillingCase, real_session, run_as_workers


def ts(*args):
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


@tagged("post_install", "-at_install")
class TestUsageBilling(FusionBillingApiCase):
    """Usage pushed through the API → period close → the service's own invoice, with HST."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.hst = cls.env["account.tax"].create({
            "name": "HST 13%", "amount": 13, "amount_type": "percent", "type_tax_use": "sale",
            "company_id": cls.env.company.id})
        cls.usage_product = cls.env["product.product"].create({
            "name": "NexaCloud usage", "type": "service", "taxes_id": [(6, 0, cls.hst.ids)]})
        cls.base_product.taxes_id = [(6, 0, cls.hst.ids)]
        cls.charge.product_id = cls.usage_product
        cls.metric_calls = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service.id, "name": "API calls", "code": "api_calls", "aggregation": "count"})
        cls.env["fusion.billing.charge"].create({
            "service_id": cls.service.id, "plan_id": cls.plan.id, "plan_code": "pro", "metric_id": cls.metric_calls.id,
            "charge_model": "package", "properties": {"amount": "2", "package_size": 2, "free_units": 0},
            "product_id": cls.usage_product.id,
        })

    def _subscribe(self, external_id="sub_jan"):
        response = self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "cus_jan", "plan_code": "pro", "external_id": external_id,
            "subscription_at": "2025-01-01T00:00:00Z"}})
        self.assertEqual(response.status_code, 200, response.text)
        return self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))

    def _push_january(self, external_id="sub_jan"):
        events = [{"transaction_id": f"bw{i}", "external_subscription_id": external_id, "code": "bandwidth_gb",
                   "timestamp": ts(2025, 1, 10 + i), "properties": {"gb": gb}} for i, gb in enumerate((100, "120.5", "29.5"))]
        events += [{"transaction_id": f"call{i}", "external_subscription_id": external_id, "code": "api_calls",
                    "timestamp": ts(2025, 1, 20, 12, i)} for i in range(5)]
        self.assertEqual(self.api("POST", "events/batch", {"events": events}).status_code, 200)

    def _close(self, day):
        with freeze_time(day):
            self.env["sale.order"]._cron_close_usage_periods()
        self.env.invalidate_all()

    def _usage_invoices(self, order):
        return self.env["account.move"].search([("x_fc_service_id", "=", self.service.id),
                                                ("partner_id", "=", order.partner_id.id)])

    def test_live_period_close_bills_usage_with_hst_to_the_cent(self):
        self.service.billing_mode = "live"
        order = self._subscribe()
        self._push_january()
        with freeze_time("2025-01-25"):
            usage = order._fc_usage_values()
        # bandwidth 250 GB: 100 included, 150 × 0.05 = 7.50; 5 calls → 3 packages of 2 × 2.00 = 6.00
        self.assertEqual([c["amount_cents"] for c in usage["charges_usage"]], [750, 600])
        self.assertEqual((usage["amount_cents"], usage["taxes_amount_cents"]), (1350, 176))

        self._close("2025-02-01 06:00:00")
        invoice = self._usage_invoices(order)
        self.assertEqual(len(invoice), 1)
        self.assertEqual(invoice.state, "posted")
        self.assertEqual(invoice.x_fc_service_id, self.service)
        self.assertEqual(invoice.invoice_date, date(2025, 2, 1))
        self.assertEqual(invoice.invoice_origin, order.name)
        lines = invoice.invoice_line_ids.sorted("price_subtotal", reverse=True)
        self.assertEqual(lines.mapped("price_subtotal"), [7.5, 6.0])
        self.assertIn("Bandwidth: 250 bandwidth_gb used, 100 included, 150 billed (2025-01-01 to 2025-01-31)",
                      lines[0].name)
        self.assertEqual(lines.tax_ids, self.hst)
        self.assertEqual((invoice.amount_untaxed, invoice.amount_tax, invoice.amount_total), (13.5, 1.76, 15.26))
        self.assertEqual(lines.mapped("balance"), [-7.5, -6.0], "income credited in the company's CAD")
        self.assertEqual(invoice.line_ids.filtered(lambda l: l.display_type == "tax").balance, -1.76)
        self.assertEqual(invoice.line_ids.filtered(lambda l: l.display_type == "payment_term").balance, 15.26)
        self.assertEqual(invoice.currency_id.name, "CAD")
        self.assertTrue(all(line.sale_line_ids.order_id == order for line in lines), "sale links kept")
        rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1))
        self.assertEqual(set(rows.mapped("state")), {"billed"})
        self.assertEqual(sorted(rows.mapped("amount")), [6.0, 7.5])
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 2, 1))

        # Closing again bills nothing twice.
        self._close("2025-02-01 07:00:00")
        self.assertEqual(len(self._usage_invoices(order)), 1)

        # A late event for the billed period is kept and reported, not silently added.
        late = self.api("POST", "events", {"event": {"transaction_id": "late", "external_subscription_id": "sub_jan",
                                                     "code": "bandwidth_gb", "timestamp": ts(2025, 1, 31),
                                                     "properties": {"gb": 5}}})
        self.assertEqual(late.json()["event"]["status"], "late")
        self.assertEqual(rows.filtered(lambda u: u.metric_id == self.metric_bandwidth).quantity, 250)

        # The API lists the invoice in Lago's shape.
        listed = self.api("GET", "invoices", params={"external_customer_id": "cus_jan"}).json()
        self.assertEqual([(i["total_amount_cents"], i["taxes_amount_cents"], i["status"]) for i in listed["invoices"]],
                         [(1526, 176, "finalized")])
        found = self.api("GET", f"invoices/{invoice.id}").json()["invoice"]
        self.assertEqual(sorted(fee["amount_cents"] for fee in found["fees"]), [600, 750])
        downloaded = self.api("POST", f"invoices/{invoice.id}/download").json()["invoice"]
        self.assertIn("/my/invoices/", downloaded["file_url"])
        self.assertEqual(self.api("GET", "invoices/999999").status_code, 404)

    def test_one_run_bills_each_customer_period_on_one_invoice_of_the_service(self):
        self.service.billing_mode = "live"
        quiet, january, behind = (self._subscribe(f"sub_b{n}") for n in range(3))  # one customer
        other = self._create_subscription(external_id="sub_other", start_date="2025-01-01", state="sale",
                                          partner=self.env["res.partner"].create({"name": "Other client"}))
        # The other client's usage goes to an analytic account by a native distribution model.
        analytic = self.env["account.analytic.account"].create({
            "name": "Other client projects", "plan_id": self.env["account.analytic.plan"].create({"name": "Clients"}).id})
        self.env["account.analytic.distribution.model"].create({
            "partner_id": other.partner_id.id, "analytic_distribution": {str(analytic.id): 100}})
        for external_id in ("sub_b1", "sub_b2", "sub_other"):
            self._push_january(external_id)
        self.api("POST", "events", {"event": {"transaction_id": "feb", "external_subscription_id": "sub_b2",
                                              "code": "bandwidth_gb", "timestamp": ts(2025, 2, 10),
                                              "properties": {"gb": 200}}})
        self._close("2025-03-02")  # one cron run: January for all, February too (caught up)
        invoices = self.env["account.move"].search([("x_fc_service_id", "=", self.service.id)])
        self.assertEqual(sorted((m.partner_id == january.partner_id, m.invoice_date, m.amount_untaxed,
                                 sorted(m.invoice_line_ids.sale_line_ids.order_id.mapped("x_fc_external_id")))
                                for m in invoices), [
            (False, date(2025, 2, 1), 13.5, ["sub_other"]),
            (True, date(2025, 2, 1), 27.0, ["sub_b1", "sub_b2"]),
            (True, date(2025, 3, 1), 5.0, ["sub_b2"]),
        ])
        shared = invoices.filtered(lambda m: m.amount_untaxed == 27.0)
        self.assertEqual(shared.invoice_origin, f"{january.name}, {behind.name}")
        self.assertEqual(set(invoices.mapped("state")), {"posted"})
        for order in (quiet, january, behind, other):
            self.assertEqual(order.x_fc_usage_closed_until, date(2025, 3, 1))
            for usage in order.x_fc_usage_ids.filtered("amount"):
                self.assertEqual((usage.state, usage.invoice_line_id.sale_line_ids.order_id), ("billed", order))
                self.assertEqual(usage.invoice_line_id.move_id.invoice_date, usage.period_end)
                self.assertEqual(usage.invoice_line_id.price_subtotal, usage.amount)
        self.assertEqual(set(quiet.x_fc_usage_ids.mapped("state")), {"closed"})
        for line in invoices.invoice_line_ids:
            expected = {str(analytic.id): 100} if line.partner_id == other.partner_id else False
            self.assertEqual((line.analytic_distribution, line.sale_line_ids.analytic_distribution), (expected, expected))

    def _journal_of_january(self):
        """(untaxed, tax, total, usage line balances, receivable) of January's live usage invoice."""
        self.service.billing_mode = "live"
        order = self._subscribe()
        self._push_january()
        self._close("2025-02-01 06:00:00")
        invoice = self._usage_invoices(order)
        receivable = invoice.line_ids.filtered(lambda l: l.display_type == "payment_term")
        return (invoice.amount_untaxed, invoice.amount_tax, invoice.amount_total,
                sorted(invoice.invoice_line_ids.mapped("balance")), receivable.balance)

    def test_untaxed_usage_is_journalled_at_its_amount(self):
        self.usage_product.taxes_id = False  # e.g. a zero-rated export customer's product
        self.assertEqual(self._journal_of_january(), (13.5, 0.0, 13.5, [-7.5, -6.0], 13.5))

    def test_usage_priced_tax_included_is_journalled_net_of_tax(self):
        self.hst.price_include_override = "tax_included"
        self.assertEqual(self._journal_of_january(), (11.95, 1.55, 13.5, [-6.64, -5.31], 13.5))

    def test_period_close_logs_no_total_change_on_the_subscription(self):
        self.service.billing_mode = "live"
        order = self._subscribe().with_context(tracking_disable=False)
        self._push_january()
        self.env.cr.flush()  # tracking of the set-up is logged now
        messages = order.message_ids
        with freeze_time("2025-02-01 06:00:00"):
            order.env["sale.order"]._cron_close_usage_periods()
        self.env.cr.flush()  # ... and the close's, if any
        self.assertGreater(order.amount_untaxed, 49.0, "usage lines were added to the subscription")
        self.assertFalse((order.message_ids - messages).tracking_value_ids,
                         "usage lines and invoices record the close, not a tracked total on every subscription")

    def test_shadow_mode_records_everything_and_creates_nothing_postable(self):
        order = self._subscribe("sub_shadow")
        self._push_january("sub_shadow")
        self._close("2025-02-01 06:00:00")
        self.assertFalse(self._usage_invoices(order))
        self.assertEqual(order.state, "draft")
        rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1))
        self.assertEqual((set(rows.mapped("state")), sorted(rows.mapped("amount"))), ({"closed"}, [6.0, 7.5]))
        self.assertFalse(order.order_line.filtered(lambda line: line.sequence == 1000))

    def test_periods_without_usage_are_closed_too(self):
        self.service.billing_mode = "live"
        order = self._subscribe("sub_quiet")
        self._close("2025-03-05")
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 3, 1))
        self.assertFalse(self._usage_invoices(order), "nothing to bill, nothing invoiced")
        self.assertEqual(len(order.x_fc_usage_ids), 4, "two periods × two charges recorded at 0")

    def test_termination_bills_the_cut_short_period(self):
        self.service.billing_mode = "live"
        order = self._subscribe("sub_term")
        with freeze_time("2025-01-25"):
            self._push_january("sub_term")
            self.api("DELETE", "subscriptions/sub_term")
        self.assertEqual(len(self._usage_invoices(order)), 1)
        self.assertFalse(order.x_fc_usage_due_date, "nothing left to close")
        self._close("2025-02-02")
        self.assertEqual(len(self._usage_invoices(order)), 1)

    def test_unique_count_counts_distinct_values_across_batches_of_the_period(self):
        metric = self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": "Active users", "code": "active_users",
            "aggregation": "unique_count", "field_name": "user"})
        order = self._subscribe()
        for batch in (("ann", "bob", "ann"), ("bob", "cyd")):
            events = [{"transaction_id": f"u-{len(batch)}-{i}", "external_subscription_id": "sub_jan",
                       "code": "active_users", "timestamp": ts(2025, 1, 5 + i), "properties": {"user": user}}
                      for i, user in enumerate(batch)]
            self.assertEqual(self.api("POST", "events/batch", {"events": events}).status_code, 200)
        february = {"transaction_id": "u-feb", "external_subscription_id": "sub_jan", "code": "active_users",
                    "timestamp": ts(2025, 2, 2), "properties": {"user": "dee"}}
        self.assertEqual(self.api("POST", "events", {"event": february}).status_code, 200)
        usage = order.x_fc_usage_ids.filtered(lambda u: u.metric_id == metric).sorted("period_start")
        self.assertEqual([(str(u.period_start), u.quantity, u.events_count) for u in usage],
                         [("2025-01-01", 3.0, 5), ("2025-02-01", 1.0, 1)])


@tagged("post_install", "-at_install")
class TestPeriodCloseWorkers(FusionBillingCase):
    """The period-close job run by two real database sessions at once (two workers or cron threads)."""

    def test_two_workers_bill_each_subscription_exactly_once(self):
        start = periods.add_period(date.today().replace(day=1), "month", 1, -1)
        end = periods.add_period(start, "month", 1)
        with real_session(self.env) as env:  # committed, so that both sessions see it
            service = env["fusion.billing.service"].create({
                "name": "Close workers", "code": "close_workers", "billing_mode": "live"})
            metric = env["fusion.billing.metric"].create({
                "service_id": service.id, "code": "calls", "name": "Calls", "aggregation": "sum", "field_name": "n"})
            product = env["product.product"].create({"name": "Close workers plan", "type": "service",
                                                     "recurring_invoice": True})
            plan = env["sale.subscription.plan"].create({
                "name": "Close workers", "x_fc_service_id": service.id, "x_fc_plan_code": "close-workers",
                "x_fc_amount": 10, "x_fc_product_id": product.id})
            env["fusion.billing.charge"].create({"service_id": service.id, "plan_id": plan.id, "metric_id": metric.id,
                                                 "charge_model": "standard", "properties": {"amount": "1"}})
            partners = env["res.partner"].create([{"name": f"Close client {n}"} for n in range(6)])
            orders = env["sale.order"].create([{
                "partner_id": partners[n % 6].id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": f"close-{n}", "pricelist_id": service._fc_pricelist().id,
                "start_date": start, "state": "sale"} for n in range(30)])
            env["fusion.billing.usage"].create([{
                "subscription_id": order.id, "metric_id": metric.id, "period_start": start, "period_end": end,
                "quantity": n + 1} for n, order in enumerate(orders)])
            ids = {"service": service.id, "orders": orders.ids, "partners": partners.ids,
                   "catalog": [(plan._name, plan.id), (product._name, product.id)]}
        self.addCleanup(self._remove_committed, ids)

        # Two workers invoicing one new customer conflict on its rank: expected, and retried.
        with mute_logger("odoo.sql_db", "odoo.addons.fusion_centralize_billing.models.sale_order"):
            errors = run_as_workers(self.env, lambda env: env["sale.order"]._cron_close_usage_periods(batch_size=4))
        self.assertEqual(errors, [], "a worker's conflict is retried, not raised")
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(ids["orders"])
            usage = orders.x_fc_usage_ids
            self.assertEqual(set(usage.mapped("state")), {"billed"})
            self.assertEqual(len(orders.order_line.filtered(lambda line: line.sequence == 1000)), 30,
                             "one usage order line per subscription, none twice")
            lines = usage.invoice_line_id
            self.assertEqual(sorted(lines.mapped("price_subtotal")), [float(n + 1) for n in range(30)])
            self.assertEqual([len(line.sale_line_ids) for line in lines], [1] * 30)
            moves = lines.move_id
            self.assertEqual(set(moves.mapped("state")), {"posted"})
            self.assertEqual(len(set(moves.mapped("name"))), len(moves), "distinct invoice numbers")
            self.assertTrue(all(len(move.partner_id) == 1 and move.x_fc_service_id.id == ids["service"]
                                for move in moves))
            self.assertEqual(set(orders.mapped("x_fc_usage_closed_until")), {end})

    def _remove_committed(self, ids):
        """Delete what the test committed (directly: posted invoices cannot be deleted the ORM way)."""
        with real_session(self.env) as env:
            cr = env.cr
            cr.execute("DELETE FROM account_move WHERE x_fc_service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM sale_order WHERE id IN %s", [tuple(ids["orders"])])
            cr.execute("DELETE FROM fusion_billing_webhook WHERE service_id = %s", [ids["service"]])
            cr.execute("DELETE FROM fusion_billing_charge WHERE service_id = %s", [ids["service"]])
            for model, record_id in ids["catalog"]:
                env[model].browse(record_id).unlink()
            env["fusion.billing.metric"].search([("service_id", "=", ids["service"])]).unlink()
            env["fusion.billing.service"].browse(ids["service"]).unlink()
            env["res.partner"].browse(ids["partners"]).unlink()
