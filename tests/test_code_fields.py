"""Fields that drive money, usage periods and what an app sees are written by code only: a person
with the native rights to a record (a salesperson on an order, an accountant on an invoice, a
Fusion Billing user) cannot write them over RPC, while what Odoo does on their behalf still works."""
from lxml import etree

from odoo import Command
from odoo.exceptions import AccessError
from odoo.tests import Form, new_test_user, tagged
from odoo.tools import mute_logger

from .common import FusionBillingCase


@tagged("post_install", "-at_install")
class TestCodeOnlyFields(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.salesperson = new_test_user(cls.env, "fc_code_sales", groups="sales_team.group_sale_salesman_all_leads")
        cls.accountant = new_test_user(cls.env, "fc_code_accountant", groups="account.group_account_invoice")
        cls.link, cls.order = cls._confirmed_app_subscription("cus_code", "code@client.example", "Code Ltd", "sub_code")
        cls.usage = cls.env["fusion.billing.usage"].create({
            "subscription_id": cls.order.id, "metric_id": cls.metric_bandwidth.id, "period_start": "2026-11-01",
            "period_end": "2026-12-01", "quantity": 250, "events_count": 3, "state": "closed", "amount": 7.5})
        cls.usage_line = cls.env["sale.order.line"].create({
            "order_id": cls.order.id, "product_id": cls.env.ref("fusion_centralize_billing.product_metered_usage").id,
            "product_uom_qty": 1, "price_unit": 7.5, "x_fc_line_kind": "usage", "x_fc_pending": True,
            "x_fc_usage_id": cls.usage.id, "x_fc_charge_id": cls.charge.id, "sequence": 1000})
        cls.fee_line = cls.order.order_line.filtered(lambda line: not line.x_fc_line_kind)
        # Another app's invoice, not billed by any subscription.
        cls.other_service = cls._create_service("NexaDesk", "nexadesk")
        cls.unrelated = cls.env["account.move"].create({
            "move_type": "out_invoice", "partner_id": cls.partner.id,
            "invoice_line_ids": [Command.create({"name": "Consulting", "quantity": 1, "price_unit": 100.0})]})

    def assertRefused(self, call, msg=None):
        with self.assertRaises(AccessError, msg=msg), mute_logger("odoo.models"), self.env.cr.savepoint():
            call()

    # ------------------------------------------------------------------ usage rows
    def test_billing_users_and_administrators_only_read_usage_rows(self):
        for user in (self.billing_user, self.billing_admin):
            usage = self.usage.with_user(user)
            self.assertEqual(usage.quantity, 250)
            self.assertRefused(lambda: usage.write({"quantity": 3}), user.login)
            self.assertRefused(lambda: usage.write({"state": "open", "quota_notified": True}), user.login)
            self.assertRefused(lambda: self.env["fusion.billing.usage"].with_user(user).create({  # noqa: B023
                "subscription_id": self.order.id, "metric_id": self.metric_bandwidth.id,
                "period_start": "2026-12-01", "period_end": "2027-01-01", "quantity": 1}), user.login)
        self.assertEqual((self.usage.quantity, self.usage.state), (250, "closed"))

    # ------------------------------------------------------------------ order lines
    def test_salesperson_cannot_write_what_a_billing_line_bills(self):
        line = self.usage_line.with_user(self.salesperson)
        self.assertEqual(line.product_uom_qty, 1)  # the salesperson reads the order
        for vals in ({"product_uom_qty": 3}, {"price_unit": 70.0}, {"x_fc_pending": False},
                     {"x_fc_usage_id": False}, {"x_fc_charge_id": False}, {"x_fc_line_kind": False}):
            self.assertRefused(lambda vals=vals: line.write(vals), vals)
        fee = self.fee_line.with_user(self.salesperson)
        self.assertRefused(lambda: fee.write({"x_fc_line_kind": "usage", "x_fc_pending": True}))
        self.assertRefused(lambda: self.env["sale.order.line"].with_user(self.salesperson).create({
            "order_id": self.order.id, "product_id": self.base_product.id, "price_unit": -500.0,
            "x_fc_line_kind": "plan_credit", "x_fc_pending": True}))
        self.assertEqual((self.usage_line.product_uom_qty, self.usage_line.price_unit, self.usage_line.x_fc_pending),
                         (1, 7.5, True))
        # Ordinary lines and the billing line's label stay the salesperson's.
        fee.write({"product_uom_qty": 2})
        line.write({"name": "Bandwidth (November)", "product_uom_qty": 1})  # the same quantity is no change
        self.assertEqual((self.fee_line.product_uom_qty, self.usage_line.name), (2, "Bandwidth (November)"))

    def test_salesperson_cannot_discount_or_untax_a_billing_line(self):
        hst = self.env["account.tax"].create({"name": "HST 13%", "amount": 13, "type_tax_use": "sale"})
        gst = self.env["account.tax"].create({"name": "GST 5%", "amount": 5, "type_tax_use": "sale"})
        self.usage_line.tax_ids = hst
        line = self.usage_line.with_user(self.salesperson)
        for vals in ({"discount": 100.0}, {"tax_ids": [Command.clear()]}, {"tax_ids": [Command.link(gst.id)]}):
            self.assertRefused(lambda vals=vals: line.write(vals), vals)
        self.assertEqual((self.usage_line.discount, self.usage_line.tax_ids), (0.0, hst))
        line.write({"tax_ids": [Command.set(hst.ids)], "discount": 0.0})  # the same values are no change
        fee = self.fee_line.with_user(self.salesperson)
        fee.write({"discount": 10.0, "tax_ids": [Command.set(hst.ids)]})  # ordinary lines stay the salesperson's
        self.assertEqual((self.fee_line.discount, self.fee_line.tax_ids), (10.0, hst))
        # The order form shows them read-only on billing lines (the list and the line's own form).
        self.salesperson.group_ids |= self.env.ref("sale.group_discount_per_so_line")
        arch = etree.fromstring(self.env["sale.order"].with_user(self.salesperson).get_views(
            [(False, "form")])["views"]["form"]["arch"])
        for name in ("tax_ids", "discount"):
            nodes = arch.xpath(f"//field[@name='order_line']/list/field[@name='{name}']"
                               f" | //field[@name='order_line']/form//field[@name='{name}']")
            self.assertEqual(len(nodes), 2, name)
            self.assertTrue(all("x_fc_line_kind" in node.get("readonly", "") for node in nodes), name)

    def test_salesperson_updates_taxes_and_discounts_an_order_with_billing_lines(self):
        """Odoo's own Update Taxes (after a new fiscal position) maps the billing lines' taxes too, as
        code: a plan change's credit keeps the taxes of the fee it gives back (its product has none).
        Odoo's Discount on all order lines discounts what the salesperson prices, never the billing lines."""
        hst = self.env["account.tax"].create({"name": "HST 13%", "amount": 13, "type_tax_use": "sale"})
        self.base_product.taxes_id = hst
        self.env.ref("fusion_centralize_billing.product_metered_usage").taxes_id = hst
        self.env.ref("fusion_centralize_billing.product_plan_change_credit").taxes_id = False
        credit = self.env["sale.order.line"].create({
            "order_id": self.order.id, "product_id": self.env.ref("fusion_centralize_billing.product_plan_change_credit").id,
            "product_uom_qty": 1, "price_unit": -10.0, "tax_ids": [Command.set(hst.ids)],
            "x_fc_line_kind": "plan_credit", "x_fc_pending": True, "sequence": 1001})
        self.order.order_line.tax_ids = hst
        exempt = self.env["account.fiscal.position"].create({"name": "Tax exempt (no taxes)"})
        order = self.order.with_user(self.salesperson)
        order.fiscal_position_id = exempt
        order.action_update_taxes()
        self.assertFalse(self.order.order_line.tax_ids, "the fee, usage and credit lines all follow the fiscal position")
        order.fiscal_position_id = False
        order.action_update_taxes()
        self.assertEqual([line.tax_ids for line in (self.fee_line, self.usage_line, credit)], [hst] * 3)

        wizard = self.env["sale.order.discount"].with_user(self.salesperson).create({
            "sale_order_id": self.order.id, "discount_type": "sol_discount", "discount_percentage": 0.1})
        wizard.action_apply_discount()
        self.assertEqual([line.discount for line in (self.fee_line, self.usage_line, credit)], [10.0, 0.0, 0.0])

    # ------------------------------------------------------------------ orders
    def test_salesperson_cannot_write_an_app_subscriptions_billing_state(self):
        order = self.order.with_user(self.salesperson)
        for vals in ({"x_fc_terminated_at": "2026-11-15 00:00:00"}, {"x_fc_usage_closed_until": "2027-06-01"},
                     {"x_fc_source_status": "incomplete"}, {"x_fc_trial_end": "2027-01-01"},
                     {"x_fc_successor_id": self.order.id}, {"x_fc_handover_notified": True}):
            self.assertRefused(lambda vals=vals: order.write(vals), vals)
        self.assertRefused(lambda: self.env["sale.order"].with_user(self.salesperson).create({
            "partner_id": self.partner.id, "x_fc_usage_closed_until": "2030-01-01"}))
        # Code's context key cannot come over RPC: any value a JSON or XML-RPC context can carry is refused.
        forged = order.with_context(fusion_billing_code_write="code")
        self.assertRefused(lambda: forged.write({"x_fc_terminated_at": "2026-11-15 00:00:00"}))
        self.assertFalse(self.order.x_fc_terminated_at or self.order.x_fc_usage_closed_until)
        fields_ = order.fields_get(["x_fc_terminated_at", "x_fc_usage_closed_until", "x_fc_source_status"], ["readonly"])
        self.assertTrue(all(values["readonly"] for values in fields_.values()), fields_)
        # Native fields stay the salesperson's, and the form saves.
        with Form(order) as form:
            form.client_order_ref = "PO-42"
        self.assertEqual(self.order.client_order_ref, "PO-42")

    def test_plan_history_stripe_id_and_billing_issue_are_written_by_code(self):
        """What the app is told its previous plan was, the Stripe subscription id, and the billing
        issue of a set-aside subscription (its retry count stops the usage job retrying it; clearing
        it leaves the usage unbilled and the order out of Needs Attention): code only, for a
        salesperson and a Fusion Billing user alike. Retry Billing is how a person resets the count."""
        self.order.write({"x_fc_billing_issue": "ValidationError: no income account",
                          "x_fc_billing_issue_at": "2026-11-20 10:00:00", "x_fc_billing_attempts": 24})
        for user in (self.salesperson, self.billing_user):
            order = self.order.with_user(user)
            for vals in ({"x_fc_previous_plan_code": "enterprise"}, {"x_fc_stripe_subscription_id": "sub_forged"},
                         {"x_fc_billing_issue": False}, {"x_fc_billing_issue_at": False},
                         {"x_fc_billing_attempts": 0}):
                self.assertRefused(lambda vals=vals: order.write(vals), (user.login, vals))  # noqa: B023
            self.assertRefused(lambda: self.env["sale.order"].with_user(user).create({  # noqa: B023
                "partner_id": self.partner.id, "x_fc_previous_plan_code": "basic"}), user.login)
            fields_ = order.fields_get(["x_fc_previous_plan_code", "x_fc_stripe_subscription_id", "x_fc_billing_issue",
                                        "x_fc_billing_issue_at", "x_fc_billing_attempts"], ["readonly"])
            self.assertTrue(all(values["readonly"] for values in fields_.values()), fields_)
        self.assertEqual((self.order.x_fc_billing_attempts, bool(self.order.x_fc_billing_issue_at)), (24, True))
        # Retry Billing checks the person's group, then code resets the count (the issue stays shown
        # until the next run bills it).
        self.assertRefused(lambda: self.order.with_user(self.salesperson).action_fc_retry_billing())
        self.order.with_user(self.billing_user).action_fc_retry_billing()
        self.assertEqual((self.order.x_fc_billing_attempts, bool(self.order.x_fc_billing_issue_at)), (0, True))

    def test_salesperson_cannot_make_an_order_an_apps(self):
        """Which app an order belongs to (the app lists it, its events bill it) is set by code; a
        renewal or upsell quotation carries its subscription's app."""
        quotation = self.env["sale.order"].create({"partner_id": self.partner.id})
        for vals in ({"x_fc_service_id": self.service.id}, {"x_fc_external_id": "sub_other"},
                     {"x_fc_account_link_id": self.link.id}):
            self.assertRefused(lambda vals=vals: quotation.with_user(self.salesperson).write(vals), vals)
            self.assertRefused(lambda vals=vals: self.env["sale.order"].with_user(self.salesperson).create(
                dict(vals, partner_id=self.partner.id)), vals)
        self.assertRefused(lambda: self.order.with_user(self.salesperson).write({"x_fc_external_id": "sub_code_2"}))
        self.assertRefused(lambda: self.env["sale.order"].with_user(self.salesperson).create({  # not its parent's app
            "partner_id": self.partner.id, "subscription_id": self.order.id, "x_fc_service_id": self.other_service.id}))
        self.assertFalse(quotation.x_fc_service_id or quotation.x_fc_external_id)
        action = self.order.with_user(self.salesperson).prepare_renewal_order()
        renewal = self.env["sale.order"].browse(action["res_id"])
        self.assertEqual((renewal.x_fc_service_id, renewal.x_fc_account_link_id, renewal.x_fc_external_id),
                         (self.service, self.link, False))

    def test_native_close_by_a_salesperson_still_ends_the_app_subscription(self):
        self.order.with_user(self.salesperson).set_close()
        self.assertEqual(self.order.subscription_state, "6_churn")
        self.assertTrue(self.order.x_fc_terminated_at, "code ends the app subscription for the salesperson")

    # ------------------------------------------------------------------ invoices
    def test_accountant_cannot_tag_an_invoice_with_an_app(self):
        invoice = self.unrelated.with_user(self.accountant)
        self.assertRefused(lambda: invoice.write({"x_fc_service_id": self.service.id}))
        self.assertRefused(lambda: invoice.write({"x_fc_account_link_id": self.link.id}))
        self.assertRefused(lambda: invoice.write({"x_fc_delivery_state": "pending"}))
        self.assertRefused(lambda: invoice.write({"x_fc_payment_status_notified": "succeeded"}))
        self.assertRefused(lambda: invoice.write({"x_fc_overdue_attempts": 3}), "would stop its overdue notice")
        self.assertRefused(lambda: self.env["account.move"].with_user(self.accountant).create({
            "move_type": "out_invoice", "partner_id": self.partner.id, "x_fc_service_id": self.other_service.id}))
        self.assertFalse(self.unrelated.x_fc_service_id or self.unrelated.x_fc_account_link_id)
        # The accountant still works on the invoice itself.
        invoice.write({"ref": "Consulting, November"})
        invoice.action_post()
        self.assertEqual(self.unrelated.state, "posted")

    def test_an_invoice_line_naming_a_usage_period_does_not_bill_it(self):
        """Only the order line carrying a usage period bills it: a line a person adds to the
        subscription's invoice naming another (open) period leaves that period open, to be billed by
        its own close."""
        open_usage = self.env["fusion.billing.usage"].create({
            "subscription_id": self.order.id, "metric_id": self.metric_bandwidth.id, "period_start": "2026-12-01",
            "period_end": "2027-01-01", "quantity": 400})
        invoice = self.order._create_invoices()  # carries the pending usage line of November
        naming = {"invoice_line_ids": [Command.create({
            "name": "Bandwidth", "quantity": 1, "price_unit": 0.01, "x_fc_usage_id": open_usage.id})]}
        self.assertRefused(lambda: invoice.with_user(self.accountant).write(naming), "a person cannot name it")
        invoice.write(naming)  # code could: the usage it names is still not billed by the line
        invoice.with_user(self.accountant).action_post()
        self.assertEqual(invoice.state, "posted")
        self.assertEqual(self.usage.state, "billed", "the period its order line carries is billed")
        self.assertEqual((open_usage.state, open_usage.invoice_line_id), ("open", self.env["account.move.line"]))

    def test_accountant_credits_a_usage_invoice_but_cannot_relink_usage(self):
        """Odoo's reversal (Credit Note) and Duplicate carry each line's usage period, for an
        accountant without any Fusion Billing group; a person cannot set, change or clear a line's
        usage period (it decides what a usage row shows as credited, and what an invoice bills)."""
        invoice = self.order._create_invoices()
        invoice.action_post()
        billed = invoice.invoice_line_ids.filtered("x_fc_usage_id")
        self.assertEqual((billed.x_fc_usage_id, self.usage.state), (self.usage, "billed"))
        other = self.env["fusion.billing.usage"].create({
            "subscription_id": self.order.id, "metric_id": self.metric_bandwidth.id, "period_start": "2026-10-01",
            "period_end": "2026-11-01", "quantity": 300, "state": "closed", "amount": 10.0})

        reversal = self.env["account.move.reversal"].with_user(self.accountant).with_context(
            active_model="account.move", active_ids=invoice.ids).create({
                "reason": "Goodwill", "journal_id": invoice.journal_id.id})
        reversal.refund_moves()
        credit_note = invoice.reversal_move_ids
        credited = credit_note.invoice_line_ids.filtered("x_fc_usage_id")
        self.assertEqual(credited.x_fc_usage_id, self.usage, "the credit note's line credits the usage it reverses")
        credit_note.with_user(self.accountant).action_post()
        self.assertEqual(self.usage.credited_amount, 7.5)

        line = credited.with_user(self.accountant)
        for vals in ({"x_fc_usage_id": other.id}, {"x_fc_usage_id": False}):
            self.assertRefused(lambda vals=vals: line.write(vals), vals)
        draft = credit_note.with_user(self.accountant).copy()  # Duplicate carries it too
        self.assertEqual(draft.invoice_line_ids.x_fc_usage_id, self.usage)
        adding = {"invoice_line_ids": [Command.create({"name": "Bandwidth", "quantity": 1, "price_unit": 10.0,
                                                       "x_fc_usage_id": other.id})]}
        self.assertRefused(lambda: draft.write(adding), "a manual line naming a usage period")
        self.assertRefused(lambda: draft.with_context(fusion_billing_usage_carried=[other.id]).write(adding),
                           "no RPC context carries code's")
        self.assertRefused(lambda: self.env["account.move"].with_user(self.accountant).create({
            "move_type": "out_refund", "partner_id": self.order.partner_id.id, "reversed_entry_id": invoice.id,
            "invoice_line_ids": adding["invoice_line_ids"]}), "nor a credit note made by hand")
        self.assertEqual((other.move_line_ids, other.credited_amount), (self.env["account.move.line"], 0.0))
        # The accountant's own Duplicate of the usage invoice carries its usage (so posting it is refused
        # as billing it twice), and the accountant edits the rest of the line freely.
        duplicate = invoice.with_user(self.accountant).copy()
        self.assertEqual(duplicate.invoice_line_ids.filtered("x_fc_usage_id").x_fc_usage_id, self.usage)
        draft_line = draft.invoice_line_ids.filtered("x_fc_usage_id")
        draft_line.write({"name": "Bandwidth (goodwill)", "x_fc_usage_id": self.usage.id})  # the same usage: no change
        self.assertEqual((draft_line.name, draft_line.x_fc_usage_id), ("Bandwidth (goodwill)", self.usage))
