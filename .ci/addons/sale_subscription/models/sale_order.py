# TEST-ONLY STAND-IN (see ../../README.md).
#
# Models ONLY what Odoo's public Subscriptions documentation describes (odoo/documentation,
# content/applications/sales/subscriptions.rst and subscriptions/*.rst: scheduled_actions,
# automatic_payments, closing, renewals, upselling); each behaviour cites the page it follows.
# No Enterprise source code was read or copied. What is not modelled is listed in ../../README.md.
import logging
from datetime import timedelta

from dateutil.relativedelta import relativedelta
from psycopg2 import errors

from odoo import Command, api, fields, models
from odoo.modules import module
from odoo.tools import SQL, float_is_zero

_logger = logging.getLogger(__name__)

SUBSCRIPTION_STATES = [
    ("1_draft", "Quotation"),
    ("2_renewal", "Renewal Quotation"),
    ("3_progress", "In Progress"),
    ("4_paused", "Paused"),
    ("5_renewed", "Renewed"),
    ("6_churn", "Churned"),
    ("7_upsell", "Upsell"),
]
# DOC scheduled_actions.rst "Closing invoices": a subscription whose charge keeps failing for
# more than fourteen days is closed.
PAYMENT_FAILURE_CLOSE_DAYS = 14
BATCH_SIZE = 100


class SaleOrder(models.Model):
    _inherit = "sale.order"

    plan_id = fields.Many2one("sale.subscription.plan", string="Recurring Plan", index="btree_not_null")
    is_subscription = fields.Boolean(compute="_compute_is_subscription", store=True)
    subscription_state = fields.Selection(
        SUBSCRIPTION_STATES, compute="_compute_subscription_state", store=True, readonly=False,
        index=True, copy=False)
    start_date = fields.Date(copy=False)
    next_invoice_date = fields.Date(string="Date of Next Invoice", copy=False)
    last_invoice_date = fields.Date(copy=False)
    end_date = fields.Date(copy=False)
    # DOC scheduled_actions.rst: "Payment Token" (Other Info > Subscription).
    payment_token_id = fields.Many2one("payment.token", copy=False)
    # DOC automatic_payments.rst: "Contract in exception" stops the scheduled actions for the order.
    payment_exception = fields.Boolean(string="Contract in exception", copy=False)
    # DOC closing.rst: the Close Reason given when the subscription is closed.
    close_reason_id = fields.Many2one("sale.order.close.reason", copy=False)
    # DOC renewals.rst / upselling.rst: renewal and upsell orders are linked to the original
    # subscription (Sales History); field names from public third-party modules (notes §B1).
    subscription_id = fields.Many2one("sale.order", string="Parent Subscription", copy=False,
                                      index="btree_not_null")
    origin_order_id = fields.Many2one("sale.order", string="First Contract", copy=False,
                                      index="btree_not_null")

    @api.depends("plan_id")
    def _compute_is_subscription(self):
        # DOC subscriptions.rst: "Sales orders with a defined recurring plan automatically become subscriptions."
        for order in self:
            order.is_subscription = bool(order.plan_id)

    @api.depends("is_subscription")
    def _compute_subscription_state(self):
        for order in self:
            if order.is_subscription and not order.subscription_state:
                order.subscription_state = "1_draft"
            elif not order.is_subscription:
                order.subscription_state = False

    # ------------------------------------------------------------------ period helpers
    def _stand_in_period(self):
        self.ensure_one()
        return relativedelta(**{f"{self.plan_id.billing_period_unit}s": self.plan_id.billing_period_value})

    def _stand_in_remaining_ratio(self):
        """Share of the current invoicing period still to come (DOC upselling.rst: prorated on the
        current invoicing period's remaining time)."""
        self.ensure_one()
        today = fields.Date.context_today(self)
        end = self.next_invoice_date
        if not end or end <= today:
            return 1.0
        start = end - self._stand_in_period()
        return max(min((end - today).days / max((end - start).days, 1), 1.0), 0.0)

    # ------------------------------------------------------------------ confirmation
    def action_confirm(self):
        renewals = self.filtered(lambda o: o.subscription_state == "2_renewal")
        upsells = self.filtered(lambda o: o.subscription_state == "7_upsell")
        res = super().action_confirm()
        for order in self.filtered("is_subscription") - upsells:
            # DOC closing.rst: "After a quotation for a subscription product has been confirmed, it
            # becomes a sales order, and the subscription status changes to In Progress."
            # DOC scheduled_actions.rst: invoices are created on the Date of Next Invoice (the start
            # date of a new subscription, unless one is set).
            today = fields.Date.context_today(order)
            order.write({
                "subscription_state": "3_progress",
                "start_date": order.start_date or today,
                "next_invoice_date": order.next_invoice_date or order.start_date or today,
            })
        for order in renewals:
            # DOC renewals.rst: once the Renewal Quotation is confirmed it becomes the subscription
            # (In Progress) and the original is Renewed (Sales History lists both).
            order.subscription_id.subscription_state = "5_renewed"
        for order in upsells:
            # DOC upselling.rst: "Once the quotation is confirmed by the customer, the upsold products
            # are added to the initial subscription."
            parent = order.subscription_id
            for line in order.order_line.filtered(lambda l: l.product_id.recurring_invoice and l.product_uom_qty):
                if line.parent_line_id and line.parent_line_id.order_id == parent:
                    line.parent_line_id.product_uom_qty += line.product_uom_qty
                else:
                    parent.order_line = [Command.create({"product_id": line.product_id.id,
                                                         "product_uom_qty": line.product_uom_qty})]
        return res

    # ------------------------------------------------------------------ closing
    def set_close(self, close_reason_id=None, **kwargs):
        """DOC closing.rst: Close (with a Close Reason) → Churned; the reason shows in the chatter."""
        reason = self.env["sale.order.close.reason"].browse(close_reason_id) if close_reason_id else False
        today = fields.Date.context_today(self)
        for order in self:
            order.write({"subscription_state": "6_churn", "close_reason_id": reason.id if reason else False,
                         "end_date": min(order.end_date or today, today)})
            order.message_post(body=self.env._("Subscription closed%s.", f": {reason.name}" if reason else ""))
        return True

    def _stand_in_portal_close(self, close_reason_id):
        """DOC closing.rst "Customer view": a customer closes a Closable plan's subscription from the
        portal with a pre-configured reason."""
        self.ensure_one()
        if not self.plan_id.user_closable or self.subscription_state != "3_progress":
            return False
        return self.set_close(close_reason_id=close_reason_id)

    @api.model
    def _cron_subscription_expiration(self):
        """DOC scheduled_actions.rst "Subscriptions expiration": closes subscriptions whose end date
        has passed (the day after it: the end date itself is served), and unpaid ones past the
        plan's Automatic Closing days."""
        today = fields.Date.context_today(self)
        self.search([("subscription_state", "=", "3_progress"), ("end_date", "!=", False),
                     ("end_date", "<", today)]).set_close()
        unpaid = self.env["account.move"].search([
            ("move_type", "=", "out_invoice"), ("state", "=", "posted"),
            ("payment_state", "in", ("not_paid", "partial")),
            ("invoice_line_ids.sale_line_ids.order_id.subscription_state", "=", "3_progress")])
        to_close = self.browse()
        for invoice in unpaid:
            for order in invoice.invoice_line_ids.sale_line_ids.order_id.filtered(
                    lambda o: o.subscription_state == "3_progress" and o.plan_id.auto_close_limit):
                if invoice.invoice_date + timedelta(days=order.plan_id.auto_close_limit) <= today:
                    to_close |= order
        to_close.set_close()

    # ------------------------------------------------------------------ renewal and upsell
    def _prepare_upsell_renew_order_values(self, subscription_management):
        self.ensure_one()
        renew = subscription_management == "renew"
        return {
            "partner_id": self.partner_id.id,
            "company_id": self.company_id.id,
            "pricelist_id": self.pricelist_id.id,
            "plan_id": self.plan_id.id,
            "subscription_id": self.id,
            "origin_order_id": (self.origin_order_id or self).id,
            "subscription_state": "2_renewal" if renew else "7_upsell",
            "client_order_ref": self.client_order_ref,
            "payment_token_id": self.payment_token_id.id,
            # DOC renewals.rst: the renewal continues the subscription from the next period;
            # DOC upselling.rst: an upsell is prorated on the current period's remaining time.
            "start_date": self.next_invoice_date if renew else fields.Date.context_today(self),
            "next_invoice_date": self.next_invoice_date,
            "order_line": self.order_line._get_renew_upsell_values(subscription_management),
        }

    def _prepare_renew_upsell_order(self, subscription_management, message_body):
        self.ensure_one()
        order = self.create(self._prepare_upsell_renew_order_values(subscription_management))
        order.message_post(body=message_body)  # DOC: the chatter links it to the original order
        return {"type": "ir.actions.act_window", "res_model": "sale.order", "res_id": order.id,
                "views": [(False, "form")]}

    def prepare_renewal_order(self):
        """DOC renewals.rst: the Renew button presents a Renewal Quotation."""
        self.ensure_one()
        return self._prepare_renew_upsell_order(
            "renew", self.env._("This subscription is the renewal of subscription %s.", self.name))

    def prepare_upsell_order(self):
        """DOC upselling.rst: the Upsell button presents an upsell quotation (the order must have been invoiced)."""
        self.ensure_one()
        return self._prepare_renew_upsell_order(
            "upsell", self.env._("This upsell order has been created from the subscription %s.", self.name))

    # ------------------------------------------------------------------ recurring invoicing
    @api.model
    def _cron_recurring_create_invoice(self):
        """DOC scheduled_actions.rst: "Sale Subscription: generate recurring invoices and payments"."""
        return self._create_recurring_invoice()

    def _stand_in_due_domain(self):
        today = fields.Date.context_today(self)
        # DOC scheduled_actions.rst: an invoice is created when today's date is the Date of Next
        # Invoice of a confirmed (In Progress) subscription; DOC automatic_payments.rst: a
        # "Contract in exception" is skipped by the scheduled actions.
        return [("is_subscription", "=", True), ("subscription_state", "=", "3_progress"), ("state", "=", "sale"),
                ("payment_exception", "=", False), ("next_invoice_date", "<=", today)]

    def _create_recurring_invoice(self, batch_size=BATCH_SIZE):
        """Invoice due subscriptions (these, or in cron mode every due one), a batch at a time."""
        if self:
            return self.filtered_domain(self._stand_in_due_domain())._stand_in_invoice_period()
        invoices = self.env["account.move"]
        seen = []  # a subscription whose charge was declined stays due: once per run
        while True:
            # Stand-in detail (not documented): rows claimed with SKIP LOCKED so that several
            # processes may run it at once (benchmarks); each batch is committed on a real cursor
            # (not a test's), and rolled back and claimed again on a conflict with another process.
            query = self._search(self._stand_in_due_domain() + [("id", "not in", seen)],
                                 order="next_invoice_date, id", limit=batch_size)
            self.env.flush_all()
            self.env.cr.execute(SQL("%s FOR UPDATE OF sale_order SKIP LOCKED", query.select("sale_order.id")))
            orders = self.browse([row[0] for row in self.env.cr.fetchall()])
            if not orders:
                return invoices
            # A test's own transaction is never committed; tests that drive real database
            # sessions (as several workers) say so with the context key fc_real_transactions.
            real_cursor = not module.current_test or self.env.context.get("fc_real_transactions")
            try:
                batch = orders._stand_in_invoice_period()
                if real_cursor:
                    self.env.cr.commit()
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if not real_cursor:
                    raise
                self.env.cr.rollback()
                continue
            invoices |= batch
            # Only those still due (e.g. a declined charge) could be claimed again in this run.
            seen += orders.filtered_domain(self._stand_in_due_domain()).ids

    def _stand_in_invoice_values(self):
        """The period's invoice: recurring lines for the period starting on the Date of Next
        Invoice, and one-shot lines not invoiced yet (notes §B6, CORROBORATED)."""
        self.ensure_one()
        start = self.next_invoice_date
        last_day = start + self._stand_in_period() - timedelta(days=1)
        lines = []
        for line in self.order_line.filtered(lambda l: not l.display_type):
            if line._stand_in_is_recurring():
                if float_is_zero(line.product_uom_qty, precision_rounding=line.product_uom_id.rounding):
                    continue
                values = line._prepare_invoice_line(quantity=line.product_uom_qty)
                values["name"] = f"{values['name']}\n{start} to {last_day}"
                lines.append(values)
            elif line.qty_to_invoice > 0:
                lines.append(line._prepare_invoice_line())
        if not lines:
            return None
        values = self._prepare_invoice()
        values.update(invoice_date=start, invoice_line_ids=[Command.create(line) for line in lines])
        return values

    def _stand_in_invoice_period(self):
        invoices = self.env["account.move"]
        # Stand-in detail: what sale's _prepare_invoice_line reads of every line, fetched for the
        # batch at once (each order's lines are read apart, without prefetch across orders).
        self.order_line.fetch(["tax_ids", "invoice_lines"])
        todo = [(order, order._stand_in_invoice_values()) for order in self]
        free = self.browse([order.id for order, values in todo if values is None])
        billed = [(order, values) for order, values in todo if values is not None]
        moves = self.env["account.move"].sudo().with_context(mail_create_nolog=True).create(
            [values for _order, values in billed]) if billed else self.env["account.move"]
        advance = free
        # DOC scheduled_actions.rst: without a token the invoice is created and posted (and sent);
        # with one, a successful charge creates and posts it.
        without_token = [(order, move) for (order, _values), move in zip(billed, moves) if not order.payment_token_id]
        if without_token:
            posting = self.env["account.move"].browse([move.id for _order, move in without_token])
            posting.action_post()
            invoices |= posting
            advance |= self.browse([order.id for order, _move in without_token])
        for (order, _values), move in zip(billed, moves):
            if not order.payment_token_id:
                continue
            outcome = order._stand_in_charge(move)
            if outcome == "done":
                if move.state == "draft":
                    move.action_post()
                advance |= order
                invoices |= move
                continue
            move.unlink()  # DOC: only a successful charge creates the invoice
            if outcome == "exception":
                # DOC automatic_payments.rst: Payment Failure, "Contract in exception".
                order.payment_exception = True
                order.message_post(body=self.env._("Automatic payment failed: contract in exception."))
            else:
                # DOC scheduled_actions.rst: reminders; closed after fourteen days of failures.
                order.message_post(body=self.env._("Automatic payment failed; it will be retried."))
                if (fields.Date.context_today(order) - order.next_invoice_date).days > PAYMENT_FAILURE_CLOSE_DAYS:
                    order.set_close()
        advance._stand_in_advance()
        for order in free:
            # DOC scheduled_actions.rst: nothing to invoice → "Free subscription", date advanced.
            order.message_post(body=self.env._("Automatic renewal succeeded. Free subscription. Next invoice: %s.",
                                               order.next_invoice_date))
        return invoices

    def _stand_in_advance(self):
        """DOC scheduled_actions.rst: the Recurring Plan moves the Date of Next Invoice one period on.

        ASSUMED (the documentation does not say how month ends are handled): one period is added to
        the current Date of Next Invoice (``relativedelta``), so a date clipped to a short month stays
        clipped: a subscription started on January 31 is next invoiced on February 28, then March 28.
        Listed in ../../README.md; tests/ENTERPRISE_CHECKLIST.md checks it on a real database."""
        groups = {}
        for order in self:
            key = (order.next_invoice_date, order.next_invoice_date + order._stand_in_period())
            groups[key] = groups.get(key, self.browse()) | order
        for (last, following), orders in groups.items():
            orders.write({"last_invoice_date": last, "next_invoice_date": following})

    def _stand_in_charge(self, invoice):
        """DOC scheduled_actions.rst / automatic_payments.rst: charge the Payment Token for the
        invoice through a payment transaction. Returns done, declined or exception."""
        self.ensure_one()
        token = self.payment_token_id
        transaction_model = self.env["payment.transaction"].sudo()
        try:
            with self.env.cr.savepoint():
                tx = transaction_model.create({
                    "provider_id": token.provider_id.id,
                    "payment_method_id": token.payment_method_id.id,
                    "reference": transaction_model._compute_reference(token.provider_id.code, prefix=self.name),
                    "amount": invoice.amount_total,
                    "currency_id": invoice.currency_id.id,
                    "partner_id": invoice.partner_id.id,
                    "token_id": token.id,
                    "operation": "offline",
                    "invoice_ids": [Command.set(invoice.ids)],
                })
                tx._charge_with_token()
        except Exception:  # noqa: BLE001 — an unknown payment status (DOC: contract in exception)
            _logger.exception("Stand-in recurring engine: charging %s failed", self.name)
            return "exception"
        if tx.state == "done":
            tx._post_process()  # posts the invoice and reconciles the payment (Community account_payment)
            return "done"
        if tx.state in ("pending", "authorized"):
            return "done"
        return "declined"
