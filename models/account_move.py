import uuid

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError

from ..core import lago, money
from .code_fields import as_code, check_code_fields

LAGO_STATUS = {"draft": "draft", "posted": "finalized", "cancel": "voided"}
LAGO_PAYMENT_STATUS = {"paid": "succeeded", "in_payment": "succeeded", "reversed": "succeeded",
                       "not_paid": "pending", "partial": "pending", "blocked": "pending"}
# Written by code only (``code_fields``): the app an invoice belongs to (that app lists it, downloads
# it and gets its webhooks), what the app was told, and whether its card is charged for it. The
# service and account are computed from the invoice's subscriptions, or set by code on documents
# without order lines (a plan change's credit note): editable computes (readonly=False) only so that
# what code sets is kept, never for people.
CODE_FIELDS = frozenset({"x_fc_service_id", "x_fc_account_link_id", "x_fc_overdue_notified", "x_fc_overdue_attempts",
                         "x_fc_payment_status_notified", "x_fc_delivery_state"})
# A journal item's usage period (what a usage row shows as billed and credited, what posting bills):
# code only, except that Odoo's own copies of a move (Duplicate, and the reversal a Credit Note is)
# carry it: a copy's new lines may carry the usage periods of the lines of the move copied, no other.
LINE_CODE_FIELDS = frozenset({"x_fc_usage_id"})
_CARRIED_KEY = "fusion_billing_usage_carried"


class _CarriedUsage(frozenset):
    """Usage ids the lines of a copy may carry, set by ``AccountMove.copy``: recognised only as this
    type, which no RPC context (JSON or XML-RPC: lists, strings, numbers) can hold."""


class AccountMove(models.Model):
    _inherit = "account.move"

    x_fc_service_id = fields.Many2one(
        "fusion.billing.service", string="Billing Service", index="btree_not_null", copy=False,
        compute="_compute_x_fc_service_id", store=True, readonly=False,
        help="The app this invoice bills (one invoice per service); native subscription invoices get it "
             "from their subscription.")
    x_fc_account_link_id = fields.Many2one(
        "fusion.billing.account.link", string="App Account", index="btree_not_null", copy=False,
        compute="_compute_x_fc_account_link_id", store=True, readonly=False,
        help="The app account whose subscriptions this invoice bills (empty if it bills several or none): "
             "the API lists an account's invoices by it, never by the contact several accounts may share. "
             "Set by code on documents without order lines (e.g. a plan change's credit note).")
    x_fc_overdue_notified = fields.Boolean(copy=False, readonly=True, help="invoice.payment_overdue was sent to the app.")
    x_fc_overdue_attempts = fields.Integer(
        copy=False, readonly=True, default=0,
        help="Daily runs that failed to queue invoice.payment_overdue; at 3 they stop (Retry Overdue Notice).")
    x_fc_payment_status_notified = fields.Char(
        copy=False, readonly=True, help="The Lago payment status last sent in invoice.payment_status_updated (none: pending).")
    x_fc_delivery_state = fields.Selection(
        [("pending", "To charge and send"), ("charging", "Charging"), ("done", "Charged and sent"),
         ("failed", "Card declined")],
        string="Final Invoice Delivery", copy=False, readonly=True, index="btree_not_null",
        help="A terminated subscription's final usage invoice is charged to the subscription's saved "
             "payment method and e-mailed after it is posted, outside the billing run's locks. "
             "'Charging' left over means the outcome is unknown: check the payment with the provider.")

    def action_fc_retry_overdue_notice(self):
        """Retry Overdue Notice: the next daily run tries again the invoices whose notice stopped."""
        if not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_user"):
            raise AccessError(self.env._("Only Fusion Billing users may retry an invoice's overdue notice."))
        as_code(self.filtered(lambda move: move.x_fc_overdue_attempts and not move.x_fc_overdue_notified)).write(
            {"x_fc_overdue_attempts": 0})  # the person's own rights
        return True

    @api.model_create_multi
    def create(self, vals_list):
        check_code_fields(self, vals_list, CODE_FIELDS, create=True)
        return super().create(vals_list)

    def write(self, vals):
        check_code_fields(self, [vals], CODE_FIELDS)
        return super().write(vals)

    def copy(self, *args, **kwargs):
        """Odoo's Duplicate and reversals (``_reverse_moves`` copies the move) carry each line's usage period."""
        carried = _CarriedUsage(self.line_ids.x_fc_usage_id.ids)
        return super(AccountMove, self.with_context(**{_CARRIED_KEY: carried})).copy(*args, **kwargs).with_env(self.env)

    @api.depends("invoice_line_ids.sale_line_ids.order_id.x_fc_service_id")
    def _compute_x_fc_service_id(self):
        for move in self:
            services = move.invoice_line_ids.sale_line_ids.order_id.x_fc_service_id
            if not move.x_fc_service_id and len(services) == 1:
                move.x_fc_service_id = services

    @api.depends("invoice_line_ids.sale_line_ids.order_id.x_fc_account_link_id")
    def _compute_x_fc_account_link_id(self):
        for move in self:
            orders = move.invoice_line_ids.sale_line_ids.order_id
            if orders or not move.x_fc_account_link_id:  # no order lines: keep what code set
                links = orders.x_fc_account_link_id
                move.x_fc_account_link_id = links if len(links) == 1 else False

    # ------------------------------------------------------------------ webhooks
    # Queued by code (``_enqueue`` builds and writes the row as superuser): an accountant posting,
    # reversing or paying an app's invoice needs no Fusion Billing right.
    def _post(self, *args, **kwargs):
        self.sudo()._fc_check_billed_once()  # code-driven: an accountant posting needs no usage rights
        posted = super()._post(*args, **kwargs)
        posted.sudo()._fc_mark_billed()  # code-driven: an accountant posting needs no usage rights
        app_invoices = posted.filtered(lambda m: m.x_fc_service_id and m.is_sale_document())
        if app_invoices:
            # The payload links the PDF with the invoice's portal token: set all missing tokens at once.
            app_invoices.sudo()._fc_ensure_access_tokens()
            objects = app_invoices.sudo()._fc_webhook_objects()
            self.env["fusion.billing.webhook"]._enqueue_many(
                [(move.x_fc_service_id, "invoice.created", move, objects[move]) for move in app_invoices])
        return posted

    def _fc_webhook_objects(self):
        """{invoice: its webhook object} of many invoices, their usage rows and app accounts looked up
        together rather than once per invoice."""
        lines = self.invoice_line_ids.filtered(lambda l: l.display_type == "product")
        usage_of = {usage.invoice_line_id: usage for usage in self.env["fusion.billing.usage"].search(
            [("invoice_line_id", "in", lines.ids)])}
        links = self._fc_account_links()
        return {move: lago.invoice(move._api_values(detailed=True, usage_of=usage_of, link=links[move]))
                for move in self}

    def _fc_ensure_access_tokens(self):
        """``portal.mixin._portal_ensure_token`` for many invoices in one statement. The mixin
        writes each token with ``write``, which on an invoice re-synchronises its dynamic lines
        (tax, payment term) once per invoice; the token drives nothing else (nothing depends on it)."""
        missing = self.filtered(lambda move: not move.access_token)
        if not missing:
            return
        missing.flush_recordset(["access_token"])
        rows = [(move.id, str(uuid.uuid4())) for move in missing]
        self.env.cr.execute(f"""
            UPDATE account_move move SET access_token = v.token
              FROM (VALUES {", ".join(["(%s, %s)"] * len(rows))}) AS v(id, token)
             WHERE move.id = v.id AND move.access_token IS NULL""", [value for row in rows for value in row])
        missing.invalidate_recordset(["access_token"])

    def _invoice_paid_hook(self, *args, **kwargs):
        """Odoo's hook for invoices becoming paid (or in payment): tell the app."""
        res = super()._invoice_paid_hook(*args, **kwargs)
        self._fc_notify_payment_status()
        return res

    def _invoice_unpaid_hook(self):
        """The counterpart of Odoo's paid hook, called by ``account.partial.reconcile.unlink`` for
        invoices that were paid (or in payment) and no longer are (payment unreconciled,
        cancelled or reset to draft)."""
        self._fc_notify_payment_status()

    def _fc_notify_payment_status(self):
        """``invoice.payment_status_updated`` for app invoices whose Lago payment status changed
        since the app was last told (paid → in payment is no change for Lago)."""
        for move in self.filtered(lambda m: m.x_fc_service_id and m.is_sale_document() and m.state == "posted"):
            status = LAGO_PAYMENT_STATUS.get(move.payment_state, "pending")
            if status != (move.x_fc_payment_status_notified or "pending"):
                move.sudo().x_fc_payment_status_notified = status
                self.env["fusion.billing.webhook"]._enqueue(
                    move.x_fc_service_id, "invoice.payment_status_updated", move)

    def _fc_webhook_object(self):
        return lago.invoice(self._api_values(detailed=True))

    def _fc_account_link(self):
        """The app account of this invoice: its subscriptions' account, else the contact's only
        account on the service (never a guess between accounts sharing the contact)."""
        self.ensure_one()
        return self._fc_account_links()[self]

    def _fc_account_links(self):
        """``_fc_account_link`` of many invoices ({invoice: account}), one search for them all."""
        links = {move: move.x_fc_account_link_id for move in self}
        guess = self.filtered(lambda move: not move.x_fc_account_link_id)
        if guess:
            found = {}
            for link in self.env["fusion.billing.account.link"].with_context(active_test=False).search(
                    [("service_id", "in", guess.x_fc_service_id.ids), ("partner_id", "in", guess.partner_id.ids)]):
                found.setdefault((link.service_id, link.partner_id), []).append(link)
            empty = self.env["fusion.billing.account.link"]
            for move in guess:
                candidates = found.get((move.x_fc_service_id, move.partner_id), [])
                links[move] = candidates[0] if len(candidates) == 1 else empty
        return links

    # ------------------------------------------------------------------ billed once
    def _fc_check_billed_once(self):
        """Refuse to post an invoice billing usage, or a plan-change credit, that another posted
        invoice billed already (e.g. a draft the native *Create Invoice* left while the recurring run
        billed the same line): the customer would pay it twice."""
        for move in self.filtered(lambda m: m.move_type == "out_invoice"):
            for line in move.invoice_line_ids:
                billed_by = line.x_fc_usage_id.invoice_line_id if line.x_fc_usage_id.state == "billed" else line.browse()
                credits = line.sale_line_ids.filtered(lambda l: l.x_fc_line_kind == "plan_credit" and not l.x_fc_pending)
                billed_by |= credits.invoice_lines.filtered(lambda l: l.move_id.move_type == "out_invoice")
                billed_by = billed_by.filtered(lambda l: l.move_id != move and l.parent_state == "posted")
                if billed_by:
                    raise UserError(self.env._(
                        "%(invoice)s cannot be posted: its line \"%(line)s\" was billed already on %(other)s. "
                        "Remove the line (or cancel this invoice) and post again.",
                        invoice=move.display_name, line=line.name, other=billed_by[0].move_id.display_name))

    def _fc_mark_billed(self):
        """An invoice carrying billing-cycle lines was posted: their usage is billed (its invoice
        line recorded) and the order lines stop being invoiceable, for good."""
        # A credit note bills them too when the lines left to bill total a credit (see _invoice_final_periods).
        lines = self.filtered(lambda m: m.move_type in ("out_invoice", "out_refund")).invoice_line_ids  # (sudo: see _post)
        sale_lines = lines.sale_line_ids.filtered(lambda l: l.x_fc_line_kind and l.x_fc_pending)
        if not sale_lines:
            return
        # Only the usage its order line bills (code-only fields), never one a person put on an invoice line.
        usage_lines = {line.x_fc_usage_id: line for line in lines
                       if line.x_fc_usage_id and line.x_fc_usage_id in line.sale_line_ids.x_fc_usage_id}
        for sale_line in sale_lines:
            if sale_line.x_fc_line_kind == "plan_credit" or sale_line.x_fc_usage_id in usage_lines:
                sale_line.x_fc_pending = False
        billed = {usage.id: None for usage in usage_lines if usage.state != "billed"}
        self.env["fusion.billing.usage"]._fc_record_amounts(
            billed, state="billed", invoice_lines={usage_id: usage_lines[self.env["fusion.billing.usage"].browse(
                usage_id)].id for usage_id in billed})

    # ------------------------------------------------------------------ Lago API
    @api.model
    def _api_domain(self, service, external_customer_id=None, statuses=(), payment_statuses=(),
                    issuing_date_from=None, issuing_date_to=None):
        """The service's invoices and credit notes, filtered by plain values: Lago status and payment
        status names (lists), issuing dates (``date``) and the app's customer id."""
        domain = [("x_fc_service_id", "=", service.id), ("move_type", "in", ("out_invoice", "out_refund"))]
        if external_customer_id:  # that account's subscriptions only (a contact may be shared by accounts)
            links = self.env["fusion.billing.account.link"].with_context(active_test=False).search(
                [("service_id", "=", service.id), ("external_id", "=", external_customer_id)])
            domain.append(("x_fc_account_link_id", "in", links.ids))
        if statuses:
            domain.append(("state", "in", [state for state, name in LAGO_STATUS.items() if name in statuses]))
        if payment_statuses:
            domain.append(("payment_state", "in", [state for state, name in LAGO_PAYMENT_STATUS.items()
                                                   if name in payment_statuses]))
        if issuing_date_from:
            domain.append(("invoice_date", ">=", issuing_date_from))
        if issuing_date_to:
            domain.append(("invoice_date", "<=", issuing_date_to))
        return domain

    @api.model
    def _api_find(self, service, invoice_id):
        """The service's invoice of id ``invoice_id`` (an int), or an empty recordset."""
        return self.search(self._api_domain(service) + [("id", "=", invoice_id)], limit=1)

    def _api_render_pdf(self):
        """Render the invoice PDF the native way (its portal URL serves it) and tell the app."""
        self.ensure_one()
        self.env["ir.actions.report"]._render_qweb_pdf("account.account_invoices", self.ids)
        self.env["fusion.billing.webhook"]._enqueue(self.x_fc_service_id, "invoice.generated", self)

    def _api_values(self, detailed=False, usage_of=None, link=None):
        """Lago invoice values. ``usage_of`` ({invoice line: usage row}) and ``link`` (its app
        account) may be given when they were looked up for many invoices at once."""
        self.ensure_one()
        currency = self.currency_id
        cents = lambda amount: money.to_minor_units(amount, currency.decimal_places)  # noqa: E731
        sign = -1 if self.move_type == "out_refund" else 1
        link = self._fc_account_link() if link is None else link
        values = {
            "lago_id": str(self.id),
            "billing_entity_code": self.company_id.name,
            "sequential_id": self.id,
            "number": self.name,
            "issuing_date": self.invoice_date or self.date,
            "payment_due_date": self.invoice_date_due,
            "net_payment_term": (self.invoice_date_due - self.invoice_date).days
            if self.invoice_date and self.invoice_date_due else 0,
            "invoice_type": "credit" if sign < 0 else "subscription",
            "status": LAGO_STATUS.get(self.state, "draft"),
            "payment_status": LAGO_PAYMENT_STATUS.get(self.payment_state, "pending"),
            "payment_overdue": bool(self.state == "posted" and self.payment_state in ("not_paid", "partial")
                                    and self.invoice_date_due and self.invoice_date_due < fields.Date.context_today(self)),
            "currency": currency.name,
            "fees_amount_cents": cents(self.amount_untaxed),
            "taxes_amount_cents": cents(self.amount_tax),
            "coupons_amount_cents": 0,
            "credit_notes_amount_cents": 0,
            "prepaid_credit_amount_cents": 0,
            "progressive_billing_credit_amount_cents": 0,
            "sub_total_excluding_taxes_amount_cents": cents(self.amount_untaxed),
            "sub_total_including_taxes_amount_cents": cents(self.amount_total),
            "total_amount_cents": cents(self.amount_total),
            "total_due_amount_cents": cents(self.amount_residual),
            "total_paid_amount_cents": cents(self.amount_total - self.amount_residual),
            "file_url": self.get_base_url() + self.get_portal_url(report_type="pdf", download=True)
            if self.state == "posted" else None,
            "version_number": 4,
            "self_billed": False,
            "created_at": self.create_date,
            "updated_at": self.write_date,
            "voided_at": self.write_date if self.state == "cancel" else None,
            "external_customer_id": link.external_id,
        }
        if detailed:
            values["customer"] = link._api_values() if link else None
            orders = self.invoice_line_ids.sale_line_ids.order_id.filtered("is_subscription")
            values["subscriptions"] = [order._api_values() for order in orders]
            lines = self.invoice_line_ids.filtered(lambda l: l.display_type == "product")
            if usage_of is None:
                usage_of = {usage.invoice_line_id: usage for usage in self.env["fusion.billing.usage"].search(
                    [("invoice_line_id", "in", lines.ids)])}
            values["fees"] = [line._api_fee_values(usage_of.get(line)) for line in lines]
        return values


class AccountMoveLine(models.Model):
    _inherit = "account.move.line"

    # Copied onto credit notes (reversals copy their lines), so what was credited is known per usage row.
    x_fc_usage_id = fields.Many2one("fusion.billing.usage", string="Usage Period", readonly=True,
                                    index="btree_not_null", ondelete="set null")

    @api.model_create_multi
    def create(self, vals_list):
        carried = self.env.context.get(_CARRIED_KEY)
        carried = carried if type(carried) is _CarriedUsage else frozenset()
        check_code_fields(self, [vals for vals in vals_list if vals.get("x_fc_usage_id") not in carried],
                          LINE_CODE_FIELDS, create=True)
        return super().create(vals_list)

    def write(self, vals):
        check_code_fields(self, [vals], LINE_CODE_FIELDS)
        return super().write(vals)

    def _api_fee_values(self, usage=None):
        """Lago fee of this invoice line; ``usage`` is the usage row it bills, if any."""
        self.ensure_one()
        currency = self.currency_id
        cents = lambda amount: money.to_minor_units(amount, currency.decimal_places)  # noqa: E731
        return {
            "lago_id": str(self.id),
            "item": {
                "type": "charge" if usage else "subscription",
                "code": usage.metric_id.code if usage else self.product_id.default_code,
                "name": self.name,
                "invoice_display_name": self.name,
            },
            "units": str(self.quantity),
            "events_count": usage.events_count if usage else None,
            "amount_cents": cents(self.price_subtotal),
            "amount_currency": currency.name,
            "taxes_amount_cents": cents(self.price_total - self.price_subtotal),
            "total_amount_cents": cents(self.price_total),
            "precise_unit_amount": str(self.price_unit),
            "from_datetime": usage.period_start if usage else None,
            "to_datetime": usage.period_end if usage else None,
        }
