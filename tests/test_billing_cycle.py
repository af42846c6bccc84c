"""The billing cycle on Odoo's native recurring invoicing (issue 15).

Every test drives the test-only recurring engine of the ``sale_subscription`` stand-in (which does
only what Odoo's public Subscriptions documentation describes) through its scheduled action, as
Enterprise's would run: usage rides on the native recurring invoice and follows the native
lifecycle. tests/ENTERPRISE_CHECKLIST.md lists the same checks by hand on a real Enterprise database.
"""
import json
from datetime import date, datetime, timedelta
from unittest.mock import patch

from freezegun import freeze_time

from odoo import Command, fields
from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged
from odoo.tools import mute_logger

from .common import UsageBillingCase, load_migration


def lines_of(invoice):
    return invoice.invoice_line_ids.sorted(lambda line: (-line.price_subtotal, line.id))


@tagged("post_install", "-at_install")
class TestUsageOnTheRecurringInvoice(UsageBillingCase):

    def test_usage_rides_on_the_recurring_invoice_exactly_once(self):
        order = self.subscribe()
        self.recurring("2025-01-01 03:00:00")
        january = order.invoice_ids
        self.assertEqual((len(january), january.amount_untaxed, january.amount_tax), (1, 49.0, 6.37))
        self.push_january()

        self.close("2025-02-01 01:00:00")  # our own job leaves a live subscription's usage to the native run
        self.assertFalse(order.order_line.filtered("x_fc_line_kind"))
        self.recurring("2025-02-01 03:00:00")
        self.recurring("2025-02-01 09:00:00")  # the same day again
        self.close("2025-02-01 10:00:00")
        february = order.invoice_ids - january
        self.assertEqual(len(february), 1, "one invoice per subscription and period: fee in advance, usage in arrears")
        self.assertEqual((february.state, february.invoice_date, february.x_fc_service_id),
                         ("posted", date(2025, 2, 1), self.service))
        lines = lines_of(february)
        self.assertEqual(lines.mapped("price_subtotal"), [49.0, 7.5, 6.0])
        self.assertIn("2025-02-01 to 2025-02-28", lines[0].name)
        self.assertIn("Bandwidth: 250 bandwidth_gb used, 100 included, 150 billed (2025-01-01 to 2025-01-31)",
                      lines[1].name)
        self.assertEqual((february.amount_untaxed, february.amount_tax, february.amount_total), (62.5, 8.13, 70.63))
        rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1))
        self.assertEqual(set(rows.mapped("state")), {"billed"})
        self.assertEqual(rows.invoice_line_id.move_id, february)
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 2, 1))
        usage_lines = order.order_line.filtered("x_fc_line_kind")
        self.assertEqual((len(usage_lines), set(usage_lines.mapped("x_fc_pending")),
                          set(usage_lines.mapped("qty_to_invoice"))), (2, {False}, {0.0}))

        self.recurring("2025-03-01 03:00:00")
        march = order.invoice_ids - january - february
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0], "February had no usage")
        found = self.api("GET", f"invoices/{february.id}").json()["invoice"]
        self.assertEqual(sorted((fee["item"]["type"], fee["amount_cents"]) for fee in found["fees"]),
                         [("charge", 600), ("charge", 750), ("subscription", 4900)])

    def test_events_of_a_subscription_off_its_billing_grid_land_in_its_billing_periods(self):
        """A subscription that started on January 10 but is invoiced on the 1st (e.g. an imported trial
        or a Stripe anchor): its usage periods are the invoicing periods, events included."""
        order = self._create_subscription(external_id="sub_off", start_date=date(2025, 1, 10),
                                          next_invoice_date=date(2025, 2, 1))
        self.assertEqual(order._fc_period(datetime(2025, 1, 20))[0], date(2025, 1, 1))
        self.push("sub_off", "off-1", (2025, 1, 20), 300)
        self.push("sub_off", "off-2", (2025, 2, 3), 150)
        january = {charge: rating.units for charge, _usage, rating in order._fc_rated_usage(date(2025, 1, 1))}
        february = {charge: rating.units for charge, _usage, rating in order._fc_rated_usage(date(2025, 2, 1))}
        self.assertEqual((january[self.charge], february[self.charge]), (300, 150))
        self.env["fusion.billing.usage"]._fc_fold(order.ids)
        self.assertEqual(sorted(order.x_fc_usage_ids.mapped("period_start")), [date(2025, 1, 1), date(2025, 2, 1)])

    def test_credit_note_cancellation_or_reset_to_draft_never_bill_usage_again(self):
        orders = [self.subscribe(f"sub_c{n}", customer=f"cus_c{n}") for n in range(3)]
        self.recurring("2025-01-01 03:00:00")
        for n, order in enumerate(orders):
            self.push_january(order.x_fc_external_id, prefix=f"c{n}")
        self.recurring("2025-02-01 03:00:00")
        february = [order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1)) for order in orders]
        self.assertEqual([invoice.amount_untaxed for invoice in february], [62.5] * 3)

        # A native credit note (the invoice's Credit Note button), a cancellation, a reset to draft.
        reversal = self.env["account.move.reversal"].with_context(
            active_model="account.move", active_ids=february[0].ids).create({
                "reason": "Goodwill", "journal_id": february[0].journal_id.id})
        reversal.refund_moves()
        february[0].reversal_move_ids.action_post()
        february[1].button_draft()
        february[1].button_cancel()
        february[2].button_draft()
        for order in orders:
            usage_lines = order.order_line.filtered("x_fc_line_kind")
            self.assertEqual(usage_lines.mapped("qty_to_invoice"), [0.0, 0.0])
            self.assertFalse(order._get_invoiceable_lines().filtered("x_fc_line_kind"),
                             "not invoiceable again by the native Create Invoice either")

        self.recurring("2025-03-01 03:00:00")
        for order in orders:
            march = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 1))
            self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0], "January's usage is not billed again")
            rows = order.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 1) and u.amount)
            self.assertEqual(set(rows.mapped("state")), {"billed"})
            self.assertEqual(sorted(rows.mapped("credited_amount")), [6.0, 7.5], "recorded on the usage row")

    def test_saved_card_is_charged_and_a_declined_charge_bills_usage_once_later(self):
        order = self.subscribe("sub_card", customer="cus_card")
        order.payment_token_id = self.stripe_token(order.partner_id)
        with self.card_answers("done"):
            self.recurring("2025-01-01 03:00:00")
        january = order.invoice_ids
        self.assertIn(january.payment_state, ("paid", "in_payment"))
        self.push_january("sub_card")
        with self.card_answers("declined"):
            self.recurring("2025-02-01 03:00:00")
        self.assertEqual(order.invoice_ids, january, "a declined charge leaves no invoice")
        self.assertEqual(order.next_invoice_date, date(2025, 2, 1))
        self.assertEqual(set(order.order_line.filtered("x_fc_line_kind").mapped("x_fc_pending")), {True})
        with self.card_answers("done"):
            self.recurring("2025-02-02 03:00:00")
            self.recurring("2025-02-03 03:00:00")
        february = order.invoice_ids - january
        self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0, 7.5, 6.0])
        self.assertIn(february.payment_state, ("paid", "in_payment"))
        self.assertEqual(february.transaction_ids.token_id, order.payment_token_id)

    def test_base_fee_keeps_the_plans_recurring_price(self):
        usd = self.env.ref("base.USD")
        usd.active = True
        product = self.env["product.product"].create({
            "name": "NexaMaps API (USD)", "type": "service", "list_price": 0, "recurring_invoice": True})
        self.env["sale.subscription.plan"].create({
            "name": "NexaMaps API (USD, monthly)", "x_fc_service_id": self.service.id, "x_fc_plan_code": "maps-usd",
            "x_fc_currency_id": usd.id, "x_fc_product_id": product.id, "x_fc_amount": 25.0})
        order = self.subscribe("sub_usd", customer="cus_usd", plan_code="maps-usd")
        line = order.order_line
        self.assertEqual((order.currency_id, line.price_unit), (usd, 25.0))
        line.product_uom_qty = 2
        self.assertEqual((line.price_unit, order.amount_untaxed), (25.0, 50.0), "a quantity change keeps it")
        order.action_update_prices()
        self.assertEqual(line.price_unit, 25.0, "Update Prices keeps it")
        renewal = self.env["sale.order"].browse(order.prepare_renewal_order()["res_id"])
        self.assertEqual(renewal.order_line.mapped("price_unit"), [25.0], "a renewal keeps it")
        plan = order.plan_id
        plan.x_fc_amount = 30.0  # a new price for the plan: its recurring price rule
        renewal.action_update_prices()
        self.assertEqual(renewal.order_line.price_unit, 30.0)
        self.assertEqual(self.api("GET", "plans/maps-usd").json()["plan"]["amount_cents"], 3000)
        self.assertEqual(plan._fc_base_fee(), 30)

    def test_a_plan_moved_to_another_currency_gets_its_own_recurring_price(self):
        """A CAD plan sold in USD from now on: its base fee becomes a USD price rule (orders on the USD
        pricelist are priced by it, not at the product's list price), and the CAD rule that prices the
        CAD subscriptions already sold stays as it was, even when the USD fee changes."""
        usd = self.env.ref("base.USD")
        usd.active = True
        product = self.env["product.product"].create({
            "name": "NexaMaps API", "type": "service", "list_price": 0, "recurring_invoice": True})
        plan = self.env["sale.subscription.plan"].create({
            "name": "NexaMaps API (monthly)", "x_fc_service_id": self.service.id, "x_fc_plan_code": "maps",
            "x_fc_currency_id": self.cad.id, "x_fc_product_id": product.id, "x_fc_amount": 25.0})
        in_cad = self.subscribe("sub_cad", customer="cus_cad", plan_code="maps")
        cad_rule = plan._fc_base_fee_rules()

        plan.x_fc_currency_id = usd
        self.assertEqual(plan.x_fc_amount, 25.0)
        self.assertEqual(plan._fc_base_fee_rules().pricelist_id.currency_id, usd)
        in_usd = self.subscribe("sub_usd", customer="cus_usd", plan_code="maps")
        self.assertEqual((in_usd.currency_id, in_usd.order_line.price_unit), (usd, 25.0))
        in_usd.action_update_prices()
        self.assertEqual(in_usd.order_line.price_unit, 25.0, "priced by the USD rule")
        plan.x_fc_amount = 27.0
        self.assertEqual((cad_rule.fixed_price, cad_rule.pricelist_id.currency_id), (25.0, self.cad),
                         "the CAD rule is left alone")
        in_cad.action_update_prices()
        in_usd.action_update_prices()
        self.assertEqual((in_cad.order_line.price_unit, in_usd.order_line.price_unit), (25.0, 27.0))

    def test_form_and_portal_stay_readable_after_two_years(self):
        order = self.subscribe("sub_long", customer="cus_long")
        day = date(2025, 1, 1)
        for month in range(24):
            self.push("sub_long", f"long-{month}", (day.year, day.month, 15), 150 + month)
            self.recurring(f"{day} 03:00:00")
            day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
        self.recurring(f"{day} 03:00:00")
        self.assertEqual(len(order.invoice_ids), 25)
        self.assertEqual(len(order.x_fc_usage_ids.filtered(lambda u: u.state == "billed" and u.amount)), 24)
        self.assertEqual(len(order.order_line), 2, "the plan line and one usage line per charge, reused each period")
        usage_line = order.order_line.filtered("x_fc_line_kind")
        self.assertIn("(2026-12-01 to 2026-12-31)", usage_line.name)
        self.assertEqual(usage_line.price_unit, 3.65, "December 2026: 173 GB, 73 above the quota")
        with freeze_time("2027-01-10"):
            self.push("sub_long", "long-now", (2027, 1, 5), 120)
            order.invalidate_recordset(["x_fc_recent_usage_ids"])
            self.assertEqual(sorted(set(order.x_fc_recent_usage_ids.mapped("period_start"))),
                             [date(2026, 12, 1), date(2027, 1, 1)], "the form lists the last periods only")
            self.assertEqual(order.x_fc_usage_count, len(order.x_fc_usage_ids))
            page = self.url_open(order.get_portal_url()).text
        self.assertIn("Usage this period", page)
        self.assertIn("2027-01-01 to 2027-01-31", page)
        self.assertNotIn("2025-01-01 to 2025-01-31", page)


@tagged("post_install", "-at_install")
class TestNativeLifecycle(UsageBillingCase):

    def webhooks(self, order, event_type):
        return self.env["fusion.billing.webhook"].search([
            ("event_type", "=", event_type), ("object_ref", "=", f"sale.order,{order.id}")])

    def terminated_webhooks(self, order):
        return self.env["fusion.billing.webhook"].search([
            ("event_type", "=", "subscription.terminated"), ("object_ref", "=", f"sale.order,{order.id}")])

    def test_close_by_the_ui_the_portal_or_expiry_is_followed(self):
        self.plan.user_closable = True
        by_ui, by_portal, expiring = (self.subscribe(f"sub_{n}", customer=f"cus_{n}") for n in ("ui", "portal", "exp"))
        self.recurring("2025-01-01 03:00:00")
        for order in (by_ui, by_portal, expiring):
            self.push(order.x_fc_external_id, f"{order.x_fc_external_id}-jan", (2025, 1, 10), 300)
        reason = self.env.ref("sale_subscription.close_reason_1")
        with freeze_time("2025-01-20 10:00:00"):
            by_ui.set_close(close_reason_id=reason.id)  # the Close button's wizard
            self.url_open(f"/my/subscriptions/{by_portal.id}/close", data={
                "access_token": by_portal._portal_ensure_token(), "close_reason_id": reason.id})
            expiring.end_date = date(2025, 1, 19)  # served to the end of January 19: past it today
            self.env["sale.order"]._cron_subscription_expiration()
        self.env.invalidate_all()

        self.close("2025-01-20 12:00:00")  # bills each final, cut-short period at once
        for order in (by_ui, by_portal, expiring):
            external_id = order.x_fc_external_id
            self.assertEqual(order.subscription_state, "6_churn")
            with freeze_time("2025-01-20 13:00:00"):
                self.assertEqual(self.api("GET", f"subscriptions/{external_id}").status_code, 404)
                found = self.api("GET", f"subscriptions/{external_id}", params={"status": "terminated"})
            self.assertEqual(found.json()["subscription"]["status"], "terminated")
            late = self.push(external_id, f"{external_id}-late", (2025, 1, 25), 50)
            self.assertEqual(late["status"], "unknown_subscription", "kept, unbillable")
            final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 1, 20))
            self.assertEqual((final.state, lines_of(final).mapped("price_subtotal")), ("posted", [10.0]),
                             "300 GB, 200 above the quota, on a standalone final invoice")
            last_day = "2025-01-19" if order == expiring else "2025-01-20"
            self.assertIn(f"(2025-01-01 to {last_day})", final.invoice_line_ids.name)
            self.assertEqual(final.x_fc_delivery_state, "done", "sent (no saved card to charge)")
        self.assertEqual(by_ui.close_reason_id, reason)
        self.assertEqual([order.x_fc_terminated_at for order in (by_ui, by_portal, expiring)],
                         [datetime(2025, 1, 20, 10)] * 2 + [datetime(2025, 1, 20)],
                         "closed when Odoo closed them; an expired one at the end of its end date")

        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        for order in (by_ui, by_portal, expiring):
            self.assertEqual(len(order.invoice_ids), 2, "no period closes after the close")
            self.assertFalse(order.x_fc_usage_ids.filtered(lambda u: u.period_start >= date(2025, 2, 1)))
            self.assertEqual(len(self.terminated_webhooks(order)), 1)
        unbillable = self.api("GET", "events", params={"status": "unbillable"}).json()["events"]
        self.assertEqual(sorted(e["transaction_id"] for e in unbillable),
                         ["sub_exp-late", "sub_portal-late", "sub_ui-late"])

    def test_expiry_closes_after_the_end_date_which_is_served_in_full(self):
        """Odoo closes a subscription once its end date has passed (scheduled_actions.rst): usage on the end
        date itself is the subscription's, billed on its final invoice."""
        self.plan.auto_close_limit = 0  # January's invoice stays unpaid: no Automatic Closing
        order = self.subscribe("sub_end", customer="cus_end")
        self.recurring("2025-01-01 03:00:00")
        self.push("sub_end", "end-day", (2025, 1, 20, 18), 300)
        order.end_date = date(2025, 1, 20)
        with freeze_time("2025-01-20 10:00:00"):
            self.env["sale.order"]._cron_subscription_expiration()
        self.assertEqual(order.subscription_state, "3_progress", "its end date has not passed")
        with freeze_time("2025-01-21 01:00:00"):
            self.env["sale.order"]._cron_subscription_expiration()
        self.env.invalidate_all()
        self.assertEqual((order.subscription_state, order.x_fc_terminated_at), ("6_churn", datetime(2025, 1, 21)))
        self.close("2025-01-21 02:00:00")
        final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 1, 21))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [10.0], "the end date's usage is billed")
        self.assertIn("(2025-01-01 to 2025-01-20)", final.invoice_line_ids.name)

    def test_renewal_and_upsell_orders_carry_the_app_ids(self):
        order = self.subscribe("sub_ren", customer="cus_ren")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_ren")
        with freeze_time("2025-01-15"):
            renewal = self.env["sale.order"].browse(order.prepare_renewal_order()["res_id"])
            renewal.action_confirm()
        self.assertEqual((renewal.x_fc_service_id, renewal.x_fc_account_link_id, renewal.x_fc_external_id),
                         (self.service, order.x_fc_account_link_id, "sub_ren"))
        self.assertEqual((order.subscription_state, order.x_fc_successor_id), ("5_renewed", renewal))
        with freeze_time("2025-01-20"):
            self.assertEqual(self.api("GET", "subscriptions/sub_ren").json()["subscription"]["lago_id"], str(order.id))
            pending = self.api("GET", "subscriptions/sub_ren", params={"status": "pending"}).json()["subscription"]
            self.assertEqual(pending["lago_id"], str(renewal.id))
        self.assertEqual(self.push("sub_ren", "feb", (2025, 2, 5), 10)["lago_subscription_id"], str(renewal.id))

        self.recurring("2025-02-01 03:00:00")
        self.assertEqual(len(order.invoice_ids), 1, "the renewed order is not invoiced again")
        self.assertEqual(lines_of(renewal.invoice_ids).mapped("price_subtotal"), [49.0, 7.5, 6.0],
                         "the renewed order's last usage rides on the renewal's first invoice")
        with freeze_time("2025-02-02"):
            self.assertEqual(self.api("GET", "subscriptions/sub_ren").json()["subscription"]["lago_id"], str(renewal.id))

        with freeze_time("2025-02-10"):
            upsell = self.env["sale.order"].browse(renewal.prepare_upsell_order()["res_id"])
            upsell.order_line.product_uom_qty = 1
            upsell.action_confirm()
        self.assertEqual((upsell.x_fc_service_id, upsell.x_fc_account_link_id), (self.service, order.x_fc_account_link_id))
        self.assertFalse(upsell.x_fc_external_id, "the app's subscription stays the live order")
        self.assertEqual(renewal.order_line.filtered(lambda l: not l.x_fc_line_kind).product_uom_qty, 2)
        self.assertEqual(upsell._create_invoices().x_fc_service_id, self.service)
        with freeze_time("2025-02-11"):
            self.assertEqual(self.api("GET", "subscriptions/sub_ren").json()["subscription"]["lago_id"], str(renewal.id))

    def test_terminating_again_changes_nothing(self):
        order = self.subscribe("sub_t", customer="cus_t")
        self.recurring("2025-01-01 03:00:00")
        order.payment_token_id = self.stripe_token(order.partner_id)
        self.push_january("sub_t")
        with freeze_time("2025-01-25 10:00:00"):
            first = self.api("DELETE", "subscriptions/sub_t").json()["subscription"]
        self.assertEqual((first["status"], order.subscription_state, order.close_reason_id.name),
                         ("terminated", "6_churn", "Terminated by the app"))
        invoices = order.invoice_ids
        final = invoices.filtered(lambda m: m.invoice_date == date(2025, 1, 25))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [7.5, 6.0], "the final period is billed at once")
        self.assertEqual((final.state, final.x_fc_delivery_state), ("posted", "pending"))
        with self.card_answers("done"):
            self.close("2025-01-25 11:00:00")  # charged and e-mailed after the request, holding no lock
        self.assertEqual(final.x_fc_delivery_state, "done")
        self.assertIn(final.payment_state, ("paid", "in_payment"))
        self.assertEqual(final.transaction_ids.token_id, order.payment_token_id)
        with freeze_time("2025-02-10"):
            self.assertEqual(self.api("DELETE", "subscriptions/sub_t").status_code, 404)
            again = self.api("DELETE", "subscriptions/sub_t", params={"status": "terminated"}).json()["subscription"]
        self.assertEqual(again["terminated_at"], first["terminated_at"])
        self.assertEqual((order.x_fc_terminated_at, order.invoice_ids), (datetime(2025, 1, 25, 10), invoices))
        self.assertEqual(len(self.terminated_webhooks(order)), 1)

        # Closed in Odoo first, then terminated by the app: the close's date stays, one webhook.
        other = self.subscribe("sub_t2", customer="cus_t2")
        with freeze_time("2025-01-20 08:00:00"):
            other.set_close()
        with freeze_time("2025-02-10"):
            again = self.api("DELETE", "subscriptions/sub_t2", params={"status": "terminated"}).json()["subscription"]
        self.assertEqual((again["status"], other.x_fc_terminated_at), ("terminated", datetime(2025, 1, 20, 8)))
        self.assertEqual(len(self.terminated_webhooks(other)), 1)

    def _plan(self, code, name, amount):
        product = self.env["product.product"].create({"name": name, "type": "service", "recurring_invoice": True,
                                                      "taxes_id": [Command.set(self.hst.ids)]})
        plan = self.env["sale.subscription.plan"].create({
            "name": name, "x_fc_service_id": self.service.id, "x_fc_plan_code": code, "x_fc_amount": amount,
            "x_fc_currency_id": self.cad.id, "x_fc_product_id": product.id})
        self.env["fusion.billing.charge"].create({
            "service_id": self.service.id, "plan_id": plan.id, "plan_code": code,
            "metric_id": self.metric_bandwidth.id, "charge_model": "standard", "properties": {"amount": "0.05"},
            "included_quantity": 100, "product_id": self.usage_product.id})
        return plan

    def test_upgrade_and_downgrade_mid_period_bill_the_right_amounts(self):
        self._plan("max", "NexaCloud Max", 99.0)
        self._plan("basic", "NexaCloud Basic", 19.0)
        up = self.subscribe("sub_up", customer="cus_up")
        down = self.subscribe("sub_down", customer="cus_down")
        self.recurring("2025-01-01 03:00:00")  # both pay January's Pro fee, 49.00
        self.push("sub_up", "up-jan", (2025, 1, 10), 300)

        with freeze_time("2025-01-17 09:00:00"):
            upgraded = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": "cus_up", "plan_code": "max", "external_id": "sub_up"}}).json()["subscription"]
            downgraded = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": "cus_down", "plan_code": "basic", "external_id": "sub_down"}}).json()["subscription"]
        self.assertEqual((upgraded["status"], upgraded["plan_code"], upgraded["previous_plan_code"]),
                         ("active", "max", "pro"))
        self.assertEqual((downgraded["status"], downgraded["plan_code"], downgraded["next_plan_code"],
                          downgraded["downgrade_plan_date"]), ("active", "pro", "basic", "2025-02-01"))
        new_up = self.env["sale.order"].browse(int(upgraded["lago_id"]))
        self.assertEqual((up.subscription_state, up.x_fc_terminated_at), ("6_churn", datetime(2025, 1, 17, 9)))

        # Upgrade at once: Max from today, less the unused 15 of January's 31 paid days of Pro.
        self.recurring("2025-01-17 10:00:00")
        self.close("2025-01-17 10:00:00")
        first = new_up.invoice_ids
        self.assertEqual(lines_of(first).mapped("price_subtotal"), [99.0, -23.71])
        self.assertIn("2025-01-17 to 2025-02-16", lines_of(first)[0].name)
        self.assertEqual((first.amount_untaxed, first.amount_total), (75.29, 85.08))
        final = up.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 1, 17))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [10.0], "Pro's usage up to the upgrade")

        # Downgrade at the end of the paid period: Basic from February 1, nothing paid twice.
        basic = down.x_fc_successor_id
        self.close("2025-01-31 23:00:00")
        self.assertFalse(self.webhooks(down, "subscription.terminated") | self.webhooks(basic, "subscription.started"),
                         "nothing changes for the app before the downgrade applies")
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        # As Lago when a downgrade applies: the old plan's subscription ends, the new one starts, once.
        self.assertEqual(len(self.webhooks(down, "subscription.terminated")), 1)
        started = self.webhooks(basic, "subscription.started")
        self.assertEqual(len(started), 1)
        self.assertEqual(json.loads(started.payload)["subscription"]["plan_code"], "basic")
        self.assertEqual(len(down.invoice_ids), 1, "January's Pro fee only")
        self.assertEqual(lines_of(basic.invoice_ids).mapped("price_subtotal"), [19.0])
        self.assertEqual(len(new_up.invoice_ids), 1, "Max is next invoiced on February 17")
        with freeze_time("2025-02-02"):
            now = self.api("GET", "subscriptions/sub_down").json()["subscription"]
        self.assertEqual((now["lago_id"], now["plan_code"], now["previous_plan_code"]), (str(basic.id), "basic", "pro"))
        self.recurring("2025-02-17 03:00:00")
        self.assertEqual(lines_of(new_up.invoice_ids - first).mapped("price_subtotal"), [99.0])

    def test_an_upgrade_crediting_more_than_the_new_fee_gives_the_rest_as_a_credit_note(self):
        """A yearly plan paid in advance, upgraded to a dearer monthly plan after 16 days: the unused
        349 of 365 paid days exceed Max's first fee, so the rest comes back as a credit note that the
        app sees on its own customer (and nothing is credited twice)."""
        yearly = self._plan("pro_year", "NexaCloud Pro (yearly)", 600.0)
        yearly.write({"billing_period_unit": "year", "billing_period_value": 1})
        self._plan("max", "NexaCloud Max", 99.0)
        order = self.subscribe("sub_y", customer="cus_y", plan_code="pro_year")
        self.recurring("2025-01-01 03:00:00")
        self.assertEqual(lines_of(order.invoice_ids).mapped("price_subtotal"), [600.0])

        with freeze_time("2025-01-17 09:00:00"):
            upgraded = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": "cus_y", "plan_code": "max", "external_id": "sub_y"}}).json()["subscription"]
        new = self.env["sale.order"].browse(int(upgraded["lago_id"]))
        self.recurring("2025-01-17 10:00:00")
        self.close("2025-01-17 10:00:00")
        unused = round(600.0 * 349 / 365, 2)  # 573.70
        self.assertEqual(lines_of(new.invoice_ids).mapped("price_subtotal"), [99.0, -99.0])
        refund = self.env["account.move"].search([("move_type", "=", "out_refund"), ("invoice_origin", "=", order.name)])
        self.assertEqual((refund.state, refund.amount_untaxed), ("posted", round(unused - 99.0, 2)))
        self.assertEqual(refund.x_fc_account_link_id, order.x_fc_account_link_id)
        with freeze_time("2025-01-18"):
            listed = self.api("GET", "customers/cus_y/invoices").json()["invoices"]
        credits = [invoice for invoice in listed if invoice["invoice_type"] == "credit"]
        self.assertEqual([invoice["lago_id"] for invoice in credits], [str(refund.id)],
                         "the app sees the credit note on its customer")
        self.assertEqual(credits[0]["fees_amount_cents"], round((unused - 99.0) * 100))

    def test_a_handover_that_fails_to_notify_does_not_stop_the_others(self):
        self._plan("basic", "NexaCloud Basic", 19.0)
        orders = [self.subscribe(f"sub_h{n}", customer=f"cus_h{n}") for n in range(3)]
        self.recurring("2025-01-01 03:00:00")
        with freeze_time("2025-01-10"):
            for n in range(3):
                self.api("POST", "subscriptions", {"subscription": {
                    "external_customer_id": f"cus_h{n}", "plan_code": "basic", "external_id": f"sub_h{n}"}})
        poisoned = orders[1]
        enqueue = type(self.env["fusion.billing.webhook"])._enqueue

        def failing(model, service, webhook_type, record=None, obj=None):
            if record == poisoned:
                raise ValueError("a receiver's object that cannot be serialised")
            return enqueue(model, service, webhook_type, record, obj)

        with patch.object(type(self.env["fusion.billing.webhook"]), "_enqueue", failing), \
                mute_logger("odoo.addons.fusion_centralize_billing.services.subscription_lifecycle"):
            self.close("2025-02-01 04:00:00")
        self.assertEqual([order.x_fc_handover_notified for order in orders], [True, False, True])
        self.close("2025-02-01 05:00:00")  # the next run tells the app about the one that failed
        self.assertTrue(poisoned.x_fc_handover_notified)
        self.assertEqual(len(self.webhooks(poisoned, "subscription.terminated")), 1)

    def post_plan(self, external_id, plan_code, day):
        with freeze_time(day):
            response = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": f"cus_{external_id}", "plan_code": plan_code, "external_id": external_id}})
        return response

    def test_a_scheduled_downgrade_is_cancelled_or_replaced_by_what_the_app_does_next(self):
        """Five subscriptions downgrade from Pro to Basic on January 10 (Basic from February 1). Then the
        app terminates one, upgrades one, downgrades one again, posts Pro again for one and cancels the
        pending Basic of the last: Odoo bills on February 1 only what the app now has."""
        self._plan("max", "NexaCloud Max", 99.0)
        self._plan("basic", "NexaCloud Basic", 19.0)
        self._plan("mini", "NexaCloud Mini", 9.0)
        names = ("gone", "up", "again", "back", "undo")
        orders = {name: self.subscribe(f"sub_{name}", customer=f"cus_sub_{name}") for name in names}
        self.recurring("2025-01-01 03:00:00")  # January's Pro fee, 49.00 each
        for name in names:
            scheduled = self.post_plan(f"sub_{name}", "basic", "2025-01-10 09:00:00").json()["subscription"]
            self.assertEqual((scheduled["plan_code"], scheduled["next_plan_code"]), ("pro", "basic"))
        basics = {name: order.x_fc_successor_id for name, order in orders.items()}
        self.assertEqual(set(basics["gone"].mapped("plan_id.x_fc_plan_code")), {"basic"})
        basics["gone"].action_lock()  # as Lock Confirmed Sales does on confirmation

        with freeze_time("2025-01-15 09:00:00"):
            gone = self.api("DELETE", "subscriptions/sub_gone")
            undo = self.api("DELETE", "subscriptions/sub_undo", params={"status": "pending"})
        up = self.post_plan("sub_up", "max", "2025-01-15 09:00:00")
        again = self.post_plan("sub_again", "mini", "2025-01-15 09:00:00")
        back = self.post_plan("sub_back", "pro", "2025-01-15 09:00:00")
        for response in (gone, undo, up, again, back):
            self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(gone.json()["subscription"]["status"], "terminated")
        self.assertEqual(undo.json()["subscription"]["status"], "canceled")
        self.assertEqual((up.json()["subscription"]["plan_code"], up.json()["subscription"]["previous_plan_code"]),
                         ("max", "pro"))
        self.assertEqual((again.json()["subscription"]["plan_code"], again.json()["subscription"]["next_plan_code"],
                          again.json()["subscription"]["downgrade_plan_date"]), ("pro", "mini", "2025-02-01"))
        self.assertEqual(back.json()["subscription"]["next_plan_code"], None, "stays on Pro")
        self.assertEqual(set(basics[n].state for n in names), {"cancel"}, "no scheduled Basic is left")
        self.assertEqual(orders["gone"].subscription_state, "6_churn")
        for name in ("back", "undo"):
            self.assertEqual((orders[name].subscription_state, orders[name].x_fc_terminated_at,
                              orders[name].x_fc_successor_id.id), ("3_progress", False, False))
        with freeze_time("2025-01-16"):
            for name, plan_code in (("back", "pro"), ("undo", "pro"), ("again", "pro")):
                found = self.api("GET", f"subscriptions/sub_{name}").json()["subscription"]
                self.assertEqual((found["lago_id"], found["plan_code"]), (str(orders[name].id), plan_code))
            self.assertEqual(self.api("GET", "subscriptions/sub_gone").status_code, 404)

        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.assertFalse(sum((basics[n].invoice_ids for n in names), self.env["account.move"]),
                         "nothing billed on a cancelled Basic")
        self.assertEqual(len(orders["gone"].invoice_ids), 1, "January's fee only: terminated")
        mini = orders["again"].x_fc_successor_id
        self.assertEqual((mini.plan_id.x_fc_plan_code, lines_of(mini.invoice_ids).mapped("price_subtotal")),
                         ("mini", [9.0]))
        for name in ("back", "undo"):
            february = orders[name].invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
            self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0], "Pro goes on")
        with freeze_time("2025-02-02"):
            self.assertEqual(self.api("GET", "subscriptions/sub_again").json()["subscription"]["plan_code"], "mini")

    def test_a_shadow_downgrade_is_cancelled_with_its_subscription(self):
        self.service.billing_mode = "shadow"
        self._plan("basic", "NexaCloud Basic", 19.0)
        order = self.subscribe("sub_sh", customer="cus_sub_sh")
        scheduled = self.post_plan("sub_sh", "basic", "2025-01-10 09:00:00").json()["subscription"]
        self.assertEqual(scheduled["next_plan_code"], "basic")
        basic = order.x_fc_successor_id
        with freeze_time("2025-01-15 09:00:00"):
            self.assertEqual(self.api("DELETE", "subscriptions/sub_sh").status_code, 200)
        self.assertEqual(basic.state, "cancel")
        with freeze_time("2025-02-02"):
            self.assertEqual(self.api("GET", "subscriptions/sub_sh").status_code, 404,
                             "the Basic the app never started is not its subscription")
            self.assertEqual(self.post_plan("sub_sh", "basic", "2025-02-02").status_code, 200,
                             "the external id is free again")

    def test_a_final_period_of_credits_only_is_billed_as_a_credit_note(self):
        """Upgraded to Max at 09:00 and terminated at 09:30, before Max's first invoice: the final period has
        only the credit for Pro's unused days (an invoice cannot be negative). It comes back as a credit
        note, e-mailed and never charged, and the subscription is not set aside (was: retried forever)."""
        self._plan("max", "NexaCloud Max", 99.0)
        order = self.subscribe("sub_neg", customer="cus_sub_neg")
        order.payment_token_id = self.stripe_token(order.partner_id)
        with self.card_answers("done"):
            self.recurring("2025-01-01 03:00:00")
        response = self.post_plan("sub_neg", "max", "2025-01-17 09:00:00")
        self.assertEqual(response.status_code, 200, response.text)
        new = self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))
        with freeze_time("2025-01-17 09:30:00"):
            self.assertEqual(self.api("DELETE", "subscriptions/sub_neg").status_code, 200)
        self.assertFalse(new.x_fc_billing_issue, "not set aside")
        refund = new.invoice_ids.filtered(lambda m: m.move_type == "out_refund")
        self.assertEqual((refund.state, refund.amount_untaxed, refund.amount_total), ("posted", 23.71, 26.79))
        self.assertEqual(refund.x_fc_account_link_id, order.x_fc_account_link_id)
        self.assertFalse(new.order_line.filtered("x_fc_pending"), "the credit is given once")
        with self.card_answers("done"):
            self.close("2025-01-17 10:00:00")
            self.close("2025-01-17 11:00:00")
        self.assertEqual(refund.x_fc_delivery_state, "done")
        self.assertFalse(refund.transaction_ids, "a credit note is never charged to the card")
        self.assertEqual(new.invoice_ids, refund, "nothing else billed, nothing billed twice")
        with freeze_time("2025-01-18"):
            listed = self.api("GET", "customers/cus_sub_neg/invoices").json()["invoices"]
        self.assertIn(str(refund.id), [invoice["lago_id"] for invoice in listed if invoice["invoice_type"] == "credit"])

    def test_the_upgrade_credits_the_fee_paid_for_the_period_whatever_its_invoice_date(self):
        """The credit is the fee paid for the period being served, found by the order line that bills it:
        January's fee invoiced late (an engine dating invoices the day it runs, January 3) is credited; a
        January fee dated January 1 and then credited in full (credit note of January 10) is not."""
        self._plan("max", "NexaCloud Max", 99.0)
        late = self.subscribe("sub_late", customer="cus_sub_late")
        refunded = self.subscribe("sub_refunded", customer="cus_sub_refunded")
        with freeze_time("2025-01-01 03:00:00"):
            refunded._create_recurring_invoice()
        with freeze_time("2025-01-10"):
            refunded.invoice_ids._reverse_moves(cancel=True)
        engine = type(self.env["sale.order"])
        invoice_values = engine._stand_in_invoice_values

        def dated_the_day_it_runs(order):
            values = invoice_values(order)
            if values:
                values["invoice_date"] = fields.Date.context_today(order)
            return values

        with patch.object(engine, "_stand_in_invoice_values", dated_the_day_it_runs):
            self.recurring("2025-01-03 03:00:00")
        self.assertEqual(late.invoice_ids.invoice_date, date(2025, 1, 3))
        self.assertEqual((late.last_invoice_date, late.next_invoice_date), (date(2025, 1, 1), date(2025, 2, 1)))
        new = {}
        for order in (late, refunded):
            upgraded = self.post_plan(order.x_fc_external_id, "max", "2025-01-17 09:00:00").json()["subscription"]
            new[order] = self.env["sale.order"].browse(int(upgraded["lago_id"]))
        self.recurring("2025-01-17 10:00:00")
        self.assertEqual(lines_of(new[late].invoice_ids).mapped("price_subtotal"), [99.0, -23.71])
        self.assertEqual(lines_of(new[refunded].invoice_ids).mapped("price_subtotal"), [99.0],
                         "January's fee was given back already: nothing is credited twice")

    def test_activation_at_cutover_invoices_nothing_before_the_next_invoice_date(self):
        self.service.billing_mode = "shadow"
        imported = self._create_subscription(
            external_id="sub_imp", start_date="2024-03-10", next_invoice_date="2025-02-10",
            order_line=[Command.create(self.plan._fc_base_fee_line_values())])
        self.assertEqual((imported.state, imported.order_line.product_id, imported.amount_untaxed),
                         ("draft", self.base_product, 49.0), "the plan and its price show before activation")
        self.recurring("2025-01-20 03:00:00")
        self.assertFalse(imported.invoice_ids, "a draft is never billable")
        self.push("sub_imp", "imp-jan", (2025, 1, 25), 200)

        self.service.billing_mode = "live"
        with freeze_time("2025-01-20 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual((imported.state, imported.next_invoice_date), ("sale", date(2025, 2, 10)))
        self.recurring("2025-01-20 10:00:00")
        self.close("2025-01-20 10:00:00")
        self.assertFalse(imported.invoice_ids, "nothing before the next invoice date: the app billed this period")
        self.recurring("2025-02-10 03:00:00")
        self.assertEqual(lines_of(imported.invoice_ids).mapped("price_subtotal"), [49.0, 5.0])
        self.assertIn("(2025-01-10 to 2025-02-09)", lines_of(imported.invoice_ids)[1].name)

    def test_activation_of_subscriptions_the_app_created_in_shadow_bills_from_their_next_renewal(self):
        """During the dual run the app creates subscriptions through the API (shadow: drafts with no
        Date of Next Invoice) and still bills them itself. At cutover Odoo takes over from the end of
        the period the app billed: no fee for the periods before it, none twice."""
        self.service.billing_mode = "shadow"
        shadow = self.subscribe("sub_shadow", "cus_shadow", day="2024-12-05")
        started = self.subscribe("sub_future", "cus_future", day="2025-01-19")
        with freeze_time("2025-01-19"):
            later = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": "cus_later", "plan_code": "pro", "external_id": "sub_later",
                "subscription_at": "2025-02-15T00:00:00Z"}})
        later = self.env["sale.order"].browse(int(later.json()["subscription"]["lago_id"]))
        self.assertEqual((shadow.state, shadow.next_invoice_date), ("draft", False))
        self.push("sub_shadow", "shadow-jan", (2025, 1, 12), 200)  # 100 GB above the quota, this period

        self.service.billing_mode = "live"
        with freeze_time("2025-01-20 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual((shadow.state, shadow.next_invoice_date), ("sale", date(2025, 2, 5)),
                         "the app billed December 5 and January 5: Odoo's first invoice is February 5")
        self.assertEqual(started.next_invoice_date, date(2025, 2, 19), "the app billed its first period")
        self.assertEqual(later.next_invoice_date, date(2025, 2, 15), "not started: Odoo bills its first period")
        self.recurring("2025-01-20 10:00:00")
        self.close("2025-01-20 10:00:00")
        self.assertFalse(shadow.invoice_ids | started.invoice_ids, "nothing the app billed is billed again")
        self.recurring("2025-02-05 03:00:00")
        self.assertEqual(lines_of(shadow.invoice_ids).mapped("price_subtotal"), [49.0, 5.0],
                         "February's fee in advance and January's usage in arrears, once")

    def test_activation_refuses_drafts_whose_next_invoice_date_has_passed(self):
        """Imported in December (next invoice January 10), activated on January 20: Stripe renewed it on
        January 10, so confirming it would bill January 10 to February 9 again. It stays a draft and the
        service says to import again; once imported again (next invoice February 10) it is activated."""
        self.service.billing_mode = "shadow"
        values = dict(start_date="2024-03-10", order_line=[Command.create(self.plan._fc_base_fee_line_values())])
        stale = self._create_subscription(external_id="sub_stale", next_invoice_date="2025-01-10", **values)
        fresh = self._create_subscription(external_id="sub_fresh", next_invoice_date="2025-02-10", **values)
        self.service.billing_mode = "live"
        with freeze_time("2025-01-20 09:00:00"):
            run = self.activate_subscriptions()
        self.assertEqual((stale.state, fresh.state), ("draft", "sale"))
        message = self.service.message_ids[0].body
        self.assertIn("1 subscriptions confirmed", message)
        self.assertIn("1 left as drafts: their Date of Next Invoice has passed, so Stripe has billed them since the "
                      f"import ({stale.name}): import again, then activate again.", message)
        self.assertEqual(run.line_ids.filtered(lambda line: line.outcome == "stale").order_id, stale)
        self.recurring("2025-01-20 10:00:00")
        self.assertFalse(stale.invoice_ids, "Stripe's January 10 renewal is not billed again")
        with freeze_time("2025-01-20 11:00:00"), self.assertRaisesRegex(UserError, "Import it again"):
            stale._fc_activate()

        stale.next_invoice_date = "2025-02-10"  # imported again
        with freeze_time("2025-01-21 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual(stale.state, "sale")
        self.recurring("2025-02-10 03:00:00")
        self.assertEqual(lines_of(stale.invoice_ids).mapped("price_subtotal"), [49.0])

    def test_an_imported_trial_bills_nothing_until_its_first_paid_renewal(self):
        """A one-month trial copied from Stripe (Jan 3 to Feb 3): activated during its trial, Odoo's first
        invoice is on Feb 3 with the next period's fee and no trial usage; usage from Feb 3 on is billed on
        Mar 3."""
        self.service.billing_mode = "shadow"
        trial = self._create_subscription(
            external_id="sub_trial", start_date="2025-01-03", next_invoice_date="2025-02-03",
            x_fc_trial_end="2025-02-03", x_fc_source_status="trialing",
            order_line=[Command.create(self.plan._fc_base_fee_line_values())])
        self.push("sub_trial", "trial-jan", (2025, 1, 25), 200)  # 100 GB above the quota, during the trial
        self.service.billing_mode = "live"
        with freeze_time("2025-01-22 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual((trial.state, trial.next_invoice_date), ("sale", date(2025, 2, 3)))
        self.assertIn("1 in trial", self.service.message_ids[0].body)
        self.recurring("2025-01-22 10:00:00")
        self.close("2025-01-22 10:00:00")
        self.assertFalse(trial.invoice_ids, "nothing during the trial")
        with freeze_time("2025-01-22 11:00:00"):
            during = self.api("GET", "subscriptions/sub_trial").json()["subscription"]
        with freeze_time("2025-02-04"):
            after = self.api("GET", "subscriptions/sub_trial").json()["subscription"]
        self.assertEqual((during["trial_ended_at"], after["trial_ended_at"]), (None, "2025-02-03T00:00:00Z"))
        self.recurring("2025-02-03 03:00:00")
        self.close("2025-02-03 10:00:00")
        self.assertEqual(lines_of(trial.invoice_ids).mapped("price_subtotal"), [49.0],
                         "the first paid period's fee, without the trial's usage")
        self.push("sub_trial", "trial-feb", (2025, 2, 10), 300)
        self.recurring("2025-03-03 03:00:00")
        march = trial.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 3))
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0, 10.0])
        self.assertIn("(2025-02-03 to 2025-03-02)", lines_of(march)[1].name)

    def test_trials_copied_before_the_upgrade_get_their_trial_end(self):
        """Migration 19.0.1.2.0: drafts the previous import copied from trials (no trial end then) bill
        nothing before their Date of Next Invoice, the end of their trial; nothing else changes."""
        self.service.billing_mode = "shadow"
        copied = self._create_subscription(external_id="sub_old_trial", start_date="2025-01-03",
                                           next_invoice_date="2025-02-03", x_fc_source_status="trialing")
        self.assertEqual(copied._fc_renewals(date(2025, 1, 1), date(2025, 3, 1)), (date(2025, 1, 3), date(2025, 2, 3)),
                         "without its trial end, the copy bills the trial")
        active = self._create_subscription(external_id="sub_old_active", start_date="2025-01-20",
                                           next_invoice_date="2025-02-20", x_fc_source_status="active")
        self.assertFalse(copied.x_fc_trial_end)
        self.env.flush_all()
        load_migration("19.0.1.2.0", "fc_migrate_1_2").migrate(self.env.cr, "19.0.1.1.0")
        self.env.invalidate_all()
        self.assertEqual((copied.x_fc_trial_end, active.x_fc_trial_end), (date(2025, 2, 3), False))
        self.assertEqual(copied._fc_renewals(date(2025, 1, 1), date(2025, 3, 1)), (date(2025, 2, 3),))

    def test_fees_of_plans_without_a_product_or_service_are_reported_and_kept_on_upgrade(self):
        """Migration 19.0.1.1.0: a former base fee becomes the plan's recurring price rule; a plan without a
        base fee product or service cannot have one: its fee is reported (the service's chatter) and kept,
        not dropped with the former column."""
        complete = self._plan("old_full", "Old Full", 0.0)
        no_product = self.env["sale.subscription.plan"].create(
            {"name": "Old Legacy", "x_fc_service_id": self.service.id, "x_fc_plan_code": "old_legacy"})
        no_service = self.env["sale.subscription.plan"].create({"name": "Old Orphan"})
        self.env.flush_all()
        self.env.cr.execute("ALTER TABLE sale_subscription_plan ADD COLUMN x_fc_amount_before_1_1 numeric")
        for plan, amount in ((complete, 29), (no_product, 12.5), (no_service, 7)):
            self.env.cr.execute("UPDATE sale_subscription_plan SET x_fc_amount_before_1_1 = %s WHERE id = %s",
                                [amount, plan.id])
        migration = load_migration("19.0.1.1.0", "fc_migrate_1_1")
        with self.assertLogs("fc_migrate_1_1", "WARNING") as logged:
            migration.migrate(self.env.cr, "19.0.1.0.0")
        self.env.invalidate_all()
        self.assertEqual(complete.x_fc_amount, 29.0)
        self.env.cr.execute("SELECT id, x_fc_amount_before_1_1 FROM sale_subscription_plan "
                            "WHERE x_fc_amount_before_1_1 IS NOT NULL")
        self.assertEqual(dict(self.env.cr.fetchall()), {no_product.id: 12.5, no_service.id: 7}, "kept")
        self.assertIn("Old Legacy: 12.50", self.service.message_ids[0].body)
        self.assertEqual(len(logged.records), 2, "both reported")

    def test_activation_never_confirms_what_stripe_does_not_bill(self):
        """A draft copied from an incomplete Stripe subscription (its first payment never went through; an
        earlier import copied them) stays a draft: activation says so, and Odoo never bills it."""
        self.service.billing_mode = "shadow"
        values = dict(start_date="2025-01-10", next_invoice_date="2025-02-10",
                      order_line=[Command.create(self.plan._fc_base_fee_line_values())])
        paying = self._create_subscription(external_id="sub_paying", x_fc_source_status="active", **values)
        incomplete = self._create_subscription(external_id="sub_incomplete", x_fc_source_status="incomplete",
                                               **values)
        self.service.billing_mode = "live"
        with freeze_time("2025-01-20 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual((paying.state, incomplete.state), ("sale", "draft"))
        message = self.service.message_ids[0].body
        self.assertIn("1 subscriptions confirmed", message)
        self.assertIn("1 left as drafts: Stripe does not bill them (incomplete: their first payment never went "
                      "through)", message)
        self.recurring("2025-02-10 03:00:00")
        self.assertEqual((len(paying.invoice_ids), len(incomplete.invoice_ids)), (1, 0))
        with freeze_time("2025-02-11 09:00:00"):  # activating again changes nothing
            self.activate_subscriptions()
        self.assertEqual(incomplete.state, "draft")


@tagged("post_install", "-at_install")
class TestBillingRunIsolation(UsageBillingCase):

    def test_a_failing_subscription_does_not_stop_the_other_199(self):
        elsewhere = self.env["res.company"].create({"name": "Another company"})
        misconfigured = self.env["product.product"].create({
            "name": "Usage (misconfigured)", "type": "service", "company_id": elsewhere.id})
        partners = self.env["res.partner"].create([{"name": f"Client {n}"} for n in range(20)])
        orders = self.env["sale.order"].create([{
            "partner_id": partners[n % 20].id, "plan_id": self.plan.id, "x_fc_service_id": self.service.id,
            "x_fc_external_id": f"batch-{n}", "pricelist_id": self.service._fc_pricelist().id,
            "start_date": "2025-01-01", "order_line": [Command.create(self.plan._fc_base_fee_line_values())],
        } for n in range(200)])
        orders.action_confirm()
        orders.write({"next_invoice_date": "2025-02-01", "last_invoice_date": "2025-01-01"})
        self.env["fusion.billing.usage"].create([{
            "subscription_id": order.id, "metric_id": self.metric_bandwidth.id, "period_start": "2025-01-01",
            "period_end": "2025-02-01", "quantity": 120} for order in orders])
        poisoned = orders[137]
        poisoned_plan = self.plan.copy({"x_fc_plan_code": "pro-misconfigured", "x_fc_product_id": self.base_product.id})
        self.env["fusion.billing.charge"].create({
            "service_id": self.service.id, "plan_id": poisoned_plan.id, "plan_code": "pro-misconfigured",
            "metric_id": self.metric_bandwidth.id, "included_quantity": 100, "charge_model": "standard",
            "properties": {"amount": "0.05"}, "product_id": misconfigured.id})
        poisoned.plan_id = poisoned_plan

        with mute_logger("odoo.addons.fusion_centralize_billing.services.billing_cycle"):
            self.recurring("2025-02-01 03:00:00")
        february = orders.invoice_ids
        self.assertEqual(len(february), 200, "the native run invoiced every subscription")
        with_usage = february.filtered(lambda m: len(m.invoice_line_ids) == 2)
        self.assertEqual(len(with_usage), 199, "199 subscriptions' usage billed")
        self.assertEqual(set(with_usage.invoice_line_ids.sale_line_ids.order_id), set(orders - poisoned))
        self.assertIn("Usage (misconfigured)", poisoned.x_fc_billing_issue)
        self.assertTrue(poisoned.x_fc_billing_issue_at)
        attention = self.env["ir.actions.act_window"]._for_xml_id("fusion_centralize_billing.sale_order_action_needs_attention")
        self.assertEqual(self.env["sale.order"].search(eval(attention["domain"]) + [("x_fc_service_id", "=", self.service.id)]),
                         poisoned)
        self.assertEqual(set(poisoned.x_fc_usage_ids.mapped("state")), {"open"}, "set aside, not half-billed")

        misconfigured.company_id = False  # fixed: the next run retries it
        self.close("2025-02-01 12:00:00")
        self.assertFalse(poisoned.x_fc_billing_issue)
        self.recurring("2025-03-01 03:00:00")
        march = poisoned.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 1))
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0, 1.0], "billed once, one period later")

    def test_a_subscription_that_keeps_failing_is_retried_for_a_day_then_waits_for_a_person(self):
        elsewhere = self.env["res.company"].create({"name": "Another company"})
        misconfigured = self.env["product.product"].create({
            "name": "Usage (misconfigured)", "type": "service", "company_id": elsewhere.id})
        order = self.subscribe("sub_fail", customer="cus_fail")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_fail")
        self.charge.product_id = misconfigured
        with mute_logger("odoo.addons.fusion_centralize_billing.services.billing_cycle"):
            with freeze_time("2025-01-20 10:00:00"):
                self.api("DELETE", "subscriptions/sub_fail")
            self.assertEqual(order.x_fc_billing_attempts, 1)
            for hour in range(1, 30):  # the job's hourly runs
                self.close(str(datetime(2025, 1, 20, 10) + timedelta(hours=hour)))
        self.assertEqual(order.x_fc_billing_attempts, 24, "retried for a day, then no more")
        self.assertEqual(order.x_fc_billing_issue_at, datetime(2025, 1, 21, 9), "the 24th attempt was the last")
        self.assertTrue(order.x_fc_billing_retry_stopped)
        self.assertIn("Usage (misconfigured)", order.x_fc_billing_issue)
        self.assertEqual(order.invoice_ids.mapped("move_type"), ["out_invoice"], "January's fee only so far")

        self.charge.product_id = self.usage_product  # fixed
        self.close("2025-01-22 10:00:00")
        self.assertTrue(order.x_fc_billing_issue, "not retried before someone asks")
        with self.assertRaises(AccessError):
            order.with_user(self.plain_user).action_fc_retry_billing()
        order.with_user(self.billing_user).action_fc_retry_billing()
        self.close("2025-01-22 11:00:00")
        self.assertFalse(order.x_fc_billing_issue)
        self.assertEqual(order.x_fc_billing_attempts, 0)
        final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 1, 22))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [7.5, 6.0])

    def test_a_charge_whose_product_became_recurring_before_the_check_is_set_aside_not_billed_every_period(self):
        order = self.subscribe("sub_rec", customer="cus_rec")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_rec")
        # A charge saved before products were checked (the constraint refuses it today): its product
        # is recurring, so a usage line of it would be billed again by every recurring run.
        self.env.cr.execute("UPDATE product_template SET recurring_invoice = true WHERE id = %s",
                            [self.usage_product.product_tmpl_id.id])
        self.usage_product.product_tmpl_id.invalidate_recordset(["recurring_invoice"])
        with mute_logger("odoo.addons.fusion_centralize_billing.services.billing_cycle"):
            self.recurring("2025-02-01 03:00:00")
        february = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0], "the fee only: usage is held back")
        self.assertFalse(order.order_line.filtered("x_fc_line_kind"), "no usage line of a recurring product")
        self.assertIn("NexaCloud usage", order.x_fc_billing_issue)
        self.assertIn("recurring", order.x_fc_billing_issue)
        self.assertEqual(set(order.x_fc_usage_ids.mapped("state")), {"open"}, "set aside, not half-billed")

        self.env.cr.execute("UPDATE product_template SET recurring_invoice = false WHERE id = %s",
                            [self.usage_product.product_tmpl_id.id])  # fixed
        self.usage_product.product_tmpl_id.invalidate_recordset(["recurring_invoice"])
        self.close("2025-02-01 12:00:00")
        self.assertFalse(order.x_fc_billing_issue)
        self.recurring("2025-03-01 03:00:00")
        march = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 1))
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0, 7.5, 6.0], "billed once, one period later")
        self.recurring("2025-04-01 03:00:00")
        april = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 4, 1))
        self.assertEqual(lines_of(april).mapped("price_subtotal"), [49.0])

    def test_a_usage_row_a_late_event_created_meanwhile_does_not_fail_the_close(self):
        storage = self.charged_metric("storage_gb", "Storage", "max", "gb")
        order = self.subscribe("sub_row", customer="cus_row")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_row")
        self.env["fusion.billing.usage"]._fc_fold(order.ids)  # the fold job ran: the events' deltas are rows
        self.assertEqual(len(order.x_fc_usage_ids), 2)  # read (and cached) before the late row arrives
        self.env.cr.execute("""
            INSERT INTO fusion_billing_usage (subscription_id, metric_id, period_start, period_end, quantity,
                   events_count, source, state, service_id, partner_id, company_id)
            SELECT id, %s, '2025-01-01', '2025-02-01', 5, 1, 'events', 'open', x_fc_service_id, partner_id, company_id
              FROM sale_order WHERE id = %s""", [storage.id, order.id])
        self.close("2025-02-01 01:00:00")
        self.recurring("2025-02-01 03:00:00")
        february = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0, 7.5, 6.0, 5.0])
        self.assertFalse(order.x_fc_billing_issue)
