"""Usage is billed once and never left behind (review findings on the billing cycle): when the
billing grid moves, when a subscription is activated past periods, when a renewal does not carry a
terminated order's usage, when a draft invoice already holds it, and for the reconciliation's reads.

Every test drives the native recurring run of the ``sale_subscription`` stand-in and the app's API,
as production does.
"""
import json
from datetime import date
from unittest.mock import patch

from freezegun import freeze_time

from odoo import Command
from odoo.exceptions import UserError
from odoo.tests import tagged

from .common import FusionBillingCase, UsageBillingCase, load_migration, ts
from .test_billing_cycle import lines_of


class ContinuityCase(UsageBillingCase):

    def stranded(self, order):
        """Usage rows left open in periods the close has gone past: never billed, never late."""
        order.invalidate_recordset()
        return order.x_fc_usage_ids.filtered(
            lambda u: u.state == "open" and order.x_fc_usage_closed_until and u.period_start < order.x_fc_usage_closed_until)

    def billed_to_february(self, external_id, customer, gb):
        """A subscription invoiced on January 1 and February 1, with ``gb`` GB used on February 10."""
        order = self.subscribe(external_id, customer=customer)
        self.recurring("2025-01-01 03:00:00")
        self.recurring("2025-02-01 03:00:00")
        self.push(external_id, f"{external_id}-feb", (2025, 2, 10), gb)
        return order

    def event(self, external_id, transaction_id, when, code, properties=None):
        response = self.api("POST", "events", {"event": {
            "transaction_id": transaction_id, "external_subscription_id": external_id, "code": code,
            "timestamp": ts(*when),
            "properties": properties or {}}})
        self.assertEqual(response.status_code, 200, response.text)
        return response.json()["event"]

    def _plan(self, code, name, amount, currency=None):
        product = self.env["product.product"].create({"name": name, "type": "service", "recurring_invoice": True,
                                                      "taxes_id": [Command.set(self.hst.ids)]})
        plan = self.env["sale.subscription.plan"].create({
            "name": name, "x_fc_service_id": self.service.id, "x_fc_plan_code": code, "x_fc_amount": amount,
            "x_fc_currency_id": (currency or self.cad).id, "x_fc_product_id": product.id})
        self.env["fusion.billing.charge"].create({
            "service_id": self.service.id, "plan_id": plan.id, "plan_code": code,
            "metric_id": self.metric_bandwidth.id, "charge_model": "standard", "properties": {"amount": "0.05"},
            "included_quantity": 100, "product_id": self.usage_product.id})
        return plan

    def _downgraded_on_january_10(self, external_id, customer, plan_code):
        """A Pro subscription of January 1, downgraded to ``plan_code`` on January 10: (order, its renewal
        from February 1)."""
        order = self.subscribe(external_id, customer=customer)
        self.recurring("2025-01-01 03:00:00")
        with freeze_time("2025-01-10 09:00:00"):
            self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": customer, "plan_code": plan_code, "external_id": external_id}})
        return order, order.x_fc_successor_id


@tagged("post_install", "-at_install")
class TestUsageFollowsAMovingGrid(ContinuityCase):
    """Finding 3: usage periods follow the Date of Next Invoice; events filed before it moved are billed."""

    def test_a_subscription_started_on_the_31st_bills_all_its_usage(self):
        """Started January 31: invoiced January 31, then February 28. Its usage of January 31 and of
        February is billed on February 28 (the grid's anchor stays on the 31st; it used to move to the
        28th when the next invoice date became February 28, leaving January 31's usage open forever)."""
        order = self.subscribe("sub_31", customer="cus_31", day="2025-01-31")
        self.push("sub_31", "d31-1", (2025, 1, 31, 10), 150)
        self.recurring("2025-01-31 12:00:00")
        self.assertEqual(order.next_invoice_date, date(2025, 2, 28))
        self.assertEqual(order.x_fc_period_anchor, date(2025, 1, 31))
        self.push("sub_31", "d31-2", (2025, 2, 10), 100)
        self.recurring("2025-02-28 03:00:00")
        february = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 28))
        self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0, 7.5], "250 GB, 150 above the quota")
        self.assertFalse(self.stranded(order))
        # The next period, wherever the recurring run puts the next invoice (its grid may move once more).
        self.push("sub_31", "d31-3", (2025, 3, 5), 130)
        self.recurring(f"{order.next_invoice_date} 03:00:00")
        third = order.invoice_ids.sorted("invoice_date")[-1]
        self.assertEqual(lines_of(third).mapped("price_subtotal"), [49.0, 1.5])
        self.assertFalse(self.stranded(order))

    def test_usage_filed_before_a_person_moved_the_next_invoice_date_is_billed_once(self):
        """A person moves the Date of Next Invoice from February 1 to February 15 (the grid moves to the
        15th): January's usage filed before the move is billed on February 15 with the rest, once; a unique
        count is counted over the events of both periods merged, each user once."""
        self.charged_metric("users", "Active users", "unique_count", "user")
        order = self.subscribe("sub_move", customer="cus_move")
        self.recurring("2025-01-01 03:00:00")
        self.push("sub_move", "mv-1", (2025, 1, 10), 150)
        for n, user in enumerate("ab"):
            self.event("sub_move", f"mv-u{n}", (2025, 1, 10, 12), "users", {"user": user})
        with freeze_time("2025-01-12 09:00:00"):
            order.next_invoice_date = date(2025, 2, 15)
        self.assertEqual(order._fc_period(date(2025, 1, 12)), (date(2024, 12, 15), date(2025, 1, 15)))
        for n, user in enumerate("bc"):
            self.event("sub_move", f"mv-v{n}", (2025, 1, 12, 12), "users", {"user": user})
        self.event("sub_move", "mv-w", (2025, 1, 20, 12), "users", {"user": "d"})
        self.push("sub_move", "mv-2", (2025, 1, 20), 100)

        self.recurring("2025-02-01 03:00:00")
        self.assertEqual(len(order.invoice_ids), 1, "nothing before the new date")
        self.recurring("2025-02-15 03:00:00")
        invoice = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 15))
        self.assertEqual(lines_of(invoice).mapped("price_subtotal"), [49.0, 3.0, 2.5, 1.0],
                         "fee; users a, b, c until Jan 15 and d after; 150 GB filed before the move (50 above the quota)")
        self.assertFalse(self.stranded(order))
        billed = order.x_fc_usage_ids.filtered(lambda u: u.state == "billed" and u.metric_id == self.metric_bandwidth)
        self.assertEqual(sum(billed.mapped("quantity")), 150.0, "the 100 GB of the next period are within its quota")
        self.recurring("2025-03-15 03:00:00")
        march = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 15))
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0], "nothing billed twice")

    def test_current_usage_shows_what_the_close_will_bill(self):
        """February's usage, filed before a person moved the Date of Next Invoice from March 1 to March 15
        (the grid moves to the 15th), is in the current usage of the period that will bill it, as the
        app's current_usage call and the order show it, and on the March 15 invoice."""
        order = self.billed_to_february("sub_now", "cus_now", 150)
        with freeze_time("2025-02-12 09:00:00"):
            order.next_invoice_date = date(2025, 3, 15)
            self.push("sub_now", "now-2", (2025, 2, 12, 10), 30)
            usage = self.api("GET", "customers/cus_now/current_usage", params={
                "external_subscription_id": "sub_now", "apply_taxes": "false"}).json()["customer_usage"]
        self.assertEqual(usage["from_datetime"], "2025-01-15T00:00:00Z")
        bandwidth = next(c for c in usage["charges_usage"] if c["billable_metric"]["code"] == "bandwidth_gb")
        self.assertEqual((bandwidth["units"], bandwidth["events_count"], bandwidth["amount_cents"]), ("180", 2, 400))
        self.recurring("2025-03-15 03:00:00")
        invoice = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 15))
        self.assertEqual(lines_of(invoice).mapped("price_subtotal"), [49.0, 4.0], "180 GB, 80 above the quota")
        self.assertFalse(self.stranded(order))

    def test_the_quota_counts_the_usage_filed_before_the_grid_moved(self):
        """February's usage filed before a person moved the Date of Next Invoice from March 1 to March 15
        is billed with the new grid's period (above): the included quota is checked on that same merged
        total, at ingestion and by the fold, and signalled once, as the close will bill it."""
        def reached(order):
            found = self.env["fusion.billing.webhook"].sudo().search([
                ("event_type", "=", "subscription.usage_threshold_reached"), ("service_id", "=", self.service.id)])
            return [json.loads(hook.payload)["subscription"]["usage_threshold"]["units"] for hook in found
                    if json.loads(hook.payload)["subscription"]["external_id"] == order.x_fc_external_id]

        before, signalled = self.billed_to_february("sub_q1", "cus_q1", 80), self.billed_to_february("sub_q2", "cus_q2", 150)
        self.assertEqual((reached(before), reached(signalled)), ([], ["150.0"]))
        with freeze_time("2025-02-12 09:00:00"):
            (before | signalled).next_invoice_date = date(2025, 3, 15)
            self.push("sub_q1", "q1-2", (2025, 2, 12, 10), 30)
            self.push("sub_q2", "q2-2", (2025, 2, 12, 10), 30)
        self.assertEqual(reached(before), ["110.0"], "80 GB filed before the move and 30 after: the quota is used up")
        self.assertEqual(reached(signalled), ["150.0"], "signalled once for the usage the close bills together")
        with freeze_time("2025-02-12 10:00:00"):
            self.push("sub_q1", "q1-3", (2025, 2, 12, 11), 5)
            self.env["fusion.billing.usage"]._fc_fold((before | signalled).ids)
        self.assertEqual((reached(before), reached(signalled)), (["110.0"], ["150.0"]), "once per period")

    def test_the_fold_signals_the_quota_on_the_merged_total(self):
        order = self.billed_to_february("sub_q3", "cus_q3", 80)
        with freeze_time("2025-02-12 09:00:00"):
            order.next_invoice_date = date(2025, 3, 15)
            with patch.object(type(self.env["fusion.billing.usage"]), "_fc_notify_quota"):
                self.push("sub_q3", "q3-2", (2025, 2, 12, 10), 30)  # as if a concurrent batch had hidden it
            self.env["fusion.billing.usage"]._fc_fold(order.ids)
        hooks = self.env["fusion.billing.webhook"].sudo().search([
            ("event_type", "=", "subscription.usage_threshold_reached"), ("service_id", "=", self.service.id)])
        self.assertEqual([json.loads(hook.payload)["subscription"]["usage_threshold"]["units"] for hook in hooks],
                         ["110.0"], "the fold checks the total the close will bill")

    def test_events_of_a_metric_no_charge_prices_sent_after_the_close_are_late(self):
        """fixapi finding 12: the close makes rows only for charged metrics; a delta of an uncharged metric
        folded after the close was a new open row for the closed period (neither billed nor late)."""
        self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": "Logins", "code": "logins", "aggregation": "count"})
        order = self.subscribe("sub_logins", customer="cus_logins")
        self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_logins")
        self.recurring("2025-02-01 03:00:00")
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 2, 1))
        with freeze_time("2025-02-02"):
            sent = self.event("sub_logins", "login-jan", (2025, 1, 20), "logins")
            event = self.env["fusion.billing.event"].browse(int(sent["lago_id"]))
            self.assertEqual(event.state, "late", "late at once: its period is closed")
            self.env["fusion.billing.usage"]._fc_fold(order.ids)
        self.assertEqual(event.state, "late")
        self.assertFalse(order.x_fc_usage_ids.filtered(lambda u: u.metric_id.code == "logins"))
        self.assertFalse(self.stranded(order))

    def test_rows_left_open_before_the_upgrade_are_settled(self):
        """Migration 19.0.1.3.0: rows already stranded behind the close. One since the confirmation of a
        live subscription is billed by its next close; one from before it (the app's to bill) is closed as
        recorded and the event only it counted is late."""
        order = self.subscribe("sub_mig", customer="cus_mig")
        self.recurring("2025-01-01 03:00:00")
        self.recurring("2025-02-01 03:00:00")
        self.assertEqual(order.x_fc_usage_closed_until, date(2025, 2, 1))
        usage = self.env["fusion.billing.usage"]
        values = {"subscription_id": order.id, "metric_id": self.metric_bandwidth.id}
        since = usage.create(dict(values, period_start=date(2025, 1, 5), period_end=date(2025, 2, 1), quantity=200,
                                  events_count=1))
        before = usage.create(dict(values, period_start=date(2024, 12, 1), period_end=date(2025, 1, 1), quantity=500,
                                   events_count=1))
        event = self.env["fusion.billing.event"].create({
            "service_id": self.service.id, "transaction_id": "mig-dec", "external_subscription_id": "sub_mig",
            "code": "bandwidth_gb", "timestamp": "2024-12-15 10:00:00", "properties": {"gb": 500},
            "fingerprint": "mig-dec", "subscription_id": order.id, "metric_id": self.metric_bandwidth.id})
        self.env.flush_all()
        load_migration("19.0.1.3.0", "fc_migrate_1_3").migrate(self.env.cr, "19.0.1.2.0")
        self.env.invalidate_all()
        self.assertEqual((since.state, before.state, event.state), ("open", "closed", "late"))
        self.recurring("2025-03-01 03:00:00")
        march = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 3, 1))
        self.assertEqual(lines_of(march).mapped("price_subtotal"), [49.0, 5.0], "200 GB, 100 above the quota")
        self.assertFalse(self.stranded(order))
        self.assertEqual(before.state, "closed")


@tagged("post_install", "-at_install")
class TestActivationClosesSkippedPeriods(ContinuityCase):
    """Finding 17: periods an activation skips are closed as recorded (never billed); their later events are late."""

    def test_a_trial_activated_midway_leaves_no_open_period_behind(self):
        self.service.billing_mode = "shadow"
        trial = self._create_subscription(
            external_id="sub_trial2", start_date="2025-01-03", next_invoice_date="2025-02-03",
            x_fc_trial_end="2025-02-03", x_fc_source_status="trialing",
            order_line=[Command.create(self.plan._fc_base_fee_line_values())])
        self.push("sub_trial2", "t2-jan", (2025, 1, 20), 200)
        self.service.billing_mode = "live"
        with freeze_time("2025-01-22 09:00:00"):
            self.activate_subscriptions()
        self.assertEqual((trial.state, trial.x_fc_usage_closed_until), ("sale", date(2025, 2, 3)))
        self.assertFalse(self.stranded(trial))
        january = trial.x_fc_usage_ids.filtered(lambda u: u.period_start == date(2025, 1, 3))
        self.assertEqual(set(january.mapped("state")), {"closed"}, "recorded, not billed")
        with freeze_time("2025-01-25 09:00:00"):
            later = self.push("sub_trial2", "t2-late", (2025, 1, 25), 300)
        self.assertEqual(later["status"], "late", "the trial's period is closed: its events bill nothing")
        self.recurring("2025-02-03 03:00:00")
        self.push("sub_trial2", "t2-feb", (2025, 2, 10), 300)
        self.recurring("2025-03-03 03:00:00")
        self.assertEqual([lines_of(m).mapped("price_subtotal") for m in trial.invoice_ids.sorted("invoice_date")],
                         [[49.0], [49.0, 10.0]], "the trial's usage is never billed, February's is")
        self.assertFalse(self.stranded(trial))


@tagged("post_install", "-at_install")
class TestFinalUsageOfARenewedOrder(ContinuityCase):

    def test_final_usage_is_billed_when_the_renewal_does_not_run(self):
        """Finding 12: a downgrade's renewal that a person cancels carries nothing: the old order's
        last usage gets its own final invoice (it was claimed by neither job)."""
        self._plan("basic", "NexaCloud Basic", 19.0)
        order, renewal = self._downgraded_on_january_10("sub_dn", "cus_dn", "basic")
        self.assertEqual(renewal.state, "sale")
        self.push_january("sub_dn")
        with freeze_time("2025-01-20 09:00:00"):
            renewal.with_context(disable_cancel_warning=True).action_cancel()
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [7.5, 6.0], "January's usage, once")
        self.assertEqual(final.state, "posted")
        self.assertFalse(order.x_fc_usage_due_date)
        self.close("2025-02-02 04:00:00")
        self.assertEqual(len(order.invoice_ids.filtered(lambda m: m.invoice_date >= date(2025, 2, 1))), 1)

    def test_usage_is_not_carried_to_a_renewal_in_another_currency(self):
        """Finding 14: a downgrade to a plan billed in USD. January's usage, rated in CAD, is billed in CAD on
        the old order's own final invoice; the USD renewal's invoice has its fee only."""
        usd = self.env.ref("base.USD")
        usd.active = True
        self._plan("basic_usd", "NexaCloud Basic (USD)", 19.0, currency=usd)
        order, renewal = self._downgraded_on_january_10("sub_fx", "cus_fx", "basic_usd")
        self.assertEqual(renewal.currency_id, usd)
        self.push_january("sub_fx")
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.assertEqual(lines_of(renewal.invoice_ids).mapped("price_subtotal"), [19.0])
        self.assertEqual(renewal.invoice_ids.currency_id, usd)
        final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
        self.assertEqual((final.currency_id, lines_of(final).mapped("price_subtotal")), (self.cad, [7.5, 6.0]))


@tagged("post_install", "-at_install")
class TestDraftInvoiceBillsUsageOnce(ContinuityCase):
    """Finding 5: usage on a draft invoice (the native Create Invoice) is not billed again by the recurring run,
    and an invoice billing usage another posted invoice billed cannot be posted."""

    def test_usage_on_a_draft_invoice_is_billed_once(self):
        order = self.subscribe("sub_draft", customer="cus_draft")
        order.payment_token_id = self.stripe_token(order.partner_id)
        with self.card_answers("done"):
            self.recurring("2025-01-01 03:00:00")
        self.push_january("sub_draft")
        with self.card_answers("declined"):
            self.recurring("2025-02-01 03:00:00")  # the usage waits on the order, pending
        draft = order._create_invoices()  # a person: Create Invoice
        self.assertEqual((draft.state, lines_of(draft).mapped("price_subtotal")), ("draft", [7.5, 6.0]))
        with self.card_answers("done"):
            self.recurring("2025-02-02 03:00:00")
        february = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1) and m.state == "posted")
        self.assertEqual(lines_of(february).mapped("price_subtotal"), [49.0], "the usage is on the draft")
        draft.invoice_date = date(2025, 2, 2)
        draft.action_post()
        billed = order.x_fc_usage_ids.filtered(lambda u: u.state == "billed" and u.amount)
        self.assertEqual(billed.invoice_line_id.move_id, draft)
        copy = draft.copy({"invoice_date": date(2025, 2, 3)})  # e.g. a person duplicates it
        with self.assertRaisesRegex(UserError, "was billed already on"):
            copy.action_post()
        self.assertEqual(copy.state, "draft")


@tagged("post_install", "-at_install")
class TestReconciliationReadsUsageInBulk(FusionBillingCase):
    """Finding 15: the shadow bills read every subscription's usage at once, not one query per
    subscription and renewal."""

    def shadow_bills(self, count, prefix):
        november = (date(2026, 11, 1), date(2026, 12, 1))
        for n in range(count):
            order = self._create_subscription(external_id=f"{prefix}-{n}", start_date=date(2026, 10, 1),
                                              next_invoice_date=november[0])
            self.env["fusion.billing.usage"].create({  # 300 GB: 200 above the quota at 0.05 = 10.00
                "subscription_id": order.id, "metric_id": self.metric_bandwidth.id, "period_start": november[0],
                "period_end": november[1], "quantity": 300, "events_count": 3})
        self.env.flush_all()
        self.env.invalidate_all()
        before = self.env.cr.sql_log_count
        bills, _orders = self.env["fusion.billing.reconciliation"]._odoo_bills(self.service, *november)
        return self.env.cr.sql_log_count - before, bills

    def test_queries_do_not_grow_with_the_subscriptions(self):
        few, bills = self.shadow_bills(2, "few")
        self.assertEqual({key: bill.usage for key, bill in bills.items()},
                         {f"few-{n}": {"bandwidth_gb": 10} for n in range(2)})
        many, bills = self.shadow_bills(10, "many")
        self.assertEqual(len(bills), 12)
        self.assertTrue(all(bill.usage == {"bandwidth_gb": 10} for bill in bills.values()))
        self.assertLess(many - few, 10, f"{few} queries for 2 subscriptions, {many} for 12")
