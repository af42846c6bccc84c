import logging
import uuid
from collections import defaultdict
from html import escape
from datetime import datetime, time, timedelta

from markupsafe import Markup

from odoo import Command, api, fields, models

from ..core import errors, lago, money, periods
from . import batch_jobs

_logger = logging.getLogger(__name__)


class SaleOrder(models.Model):
    """Native subscriptions (``is_subscription``) carry which app they belong to and its id for them."""

    _inherit = "sale.order"

    x_fc_service_id = fields.Many2one(
        "fusion.billing.service", string="Billing Service", index="btree_not_null", copy=False)
    x_fc_account_link_id = fields.Many2one(
        "fusion.billing.account.link", string="App Account", index="btree_not_null", copy=False)
    x_fc_external_id = fields.Char(
        string="External Subscription ID", index="btree_not_null", copy=False,
        help="The subscription's id in the app (Lago external_id); events refer to it.")
    x_fc_source_status = fields.Char(
        string="Status in App", copy=False, help="Status in the app's own billing (e.g. Stripe's), for information.")
    x_fc_stripe_subscription_id = fields.Char(
        string="Stripe Subscription (info)", copy=False, help="Informational only: never used to charge.")
    x_fc_terminated_at = fields.Datetime(string="Terminated At", copy=False)
    x_fc_previous_plan_code = fields.Char(string="Previous Plan Code", copy=False)
    x_fc_usage_ids = fields.One2many("fusion.billing.usage", "subscription_id", string="Usage")
    x_fc_current_usage_html = fields.Html(
        string="Current Usage", compute="_compute_x_fc_current_usage_html", sanitize=False,
        help="The open period's usage rated live, as the app's current_usage call and the invoice show it.")
    x_fc_usage_closed_until = fields.Date(
        string="Usage Closed Until", copy=False,
        help="Usage periods starting before this date are closed (billed, or recorded in shadow).")
    x_fc_usage_due_date = fields.Date(
        string="Next Usage Close", compute="_compute_x_fc_usage_due_date", store=True, index="btree_not_null",
        help="End of the first open usage period: the period-close cron bills it from that day.")

    _x_fc_external_uniq = models.UniqueIndex(
        "(x_fc_service_id, x_fc_external_id) WHERE x_fc_external_id IS NOT NULL AND x_fc_terminated_at IS NULL",
        "This app already has a live subscription with that external id.")

    def _compute_x_fc_current_usage_html(self):
        for order in self:
            if not (order.x_fc_service_id and order.plan_id and order.id):
                order.x_fc_current_usage_html = False
                continue
            # Whoever may read the order (a salesperson) sees its usage, rated by code: the usage
            # rows, charges and metrics behind it are not theirs to read.
            values = order.sudo()._fc_usage_values()
            metrics = {str(c.metric_id.id): c.metric_id for c in order.sudo()._fc_charges()}
            rows = "".join(
                f"<tr><td>{escape(c['billable_metric']['name'])}</td>"
                f"<td class='text-end'>{escape(metrics[c['billable_metric']['lago_id']]._fc_format_quantity(c['units']))}</td>"
                f"<td class='text-end'>{c['events_count']}</td>"
                f"<td class='text-end'>{money.from_minor_units(c['amount_cents'], order.currency_id.decimal_places)}</td></tr>"
                for c in values["charges_usage"])
            total = money.from_minor_units(values["amount_cents"], order.currency_id.decimal_places)
            order.x_fc_current_usage_html = Markup(
                f"<p>{values['from_datetime']:%Y-%m-%d} to {values['to_datetime']:%Y-%m-%d} ({values['currency']})</p>"
                "<table class='table table-sm'><thead><tr><th>Metric</th><th class='text-end'>Units</th>"
                f"<th class='text-end'>Events</th><th class='text-end'>Amount</th></tr></thead><tbody>{rows}</tbody>"
                f"<tfoot><tr><th colspan='3'>Total before tax</th><th class='text-end'>{total}</th></tr></tfoot></table>")

    # ------------------------------------------------------------------ periods
    @api.depends("x_fc_service_id", "plan_id", "start_date", "x_fc_usage_closed_until", "x_fc_terminated_at", "state")
    def _compute_x_fc_usage_due_date(self):
        for order in self:
            if not (order.x_fc_service_id and order.plan_id and order.is_subscription) or order.state == "cancel":
                order.x_fc_usage_due_date = False
                continue
            _start, end = order._fc_period(order.x_fc_usage_closed_until or order._fc_anchor())
            ended = order.x_fc_terminated_at
            order.x_fc_usage_due_date = False if ended and order.x_fc_usage_closed_until and \
                order.x_fc_usage_closed_until > ended.date() else end

    def _fc_anchor(self):
        self.ensure_one()
        return self.start_date or self.date_order.date()

    def _fc_period(self, at=None):
        """(start, end exclusive) of the billing period containing ``at`` (default: now)."""
        self.ensure_one()
        plan = self.plan_id
        return periods.period_bounds(self._fc_anchor(), plan.billing_period_unit, plan.billing_period_value,
                                     at or fields.Datetime.now())

    # ------------------------------------------------------------------ rating
    def _fc_charges(self):
        self.ensure_one()
        return self.plan_id.x_fc_charge_ids.filtered("active")

    def _fc_rated_usage(self, period_start):
        """[(charge, usage row or empty, rating)] of one period: what current usage shows and the invoice bills."""
        self.ensure_one()
        usages = {u.metric_id: u for u in self.x_fc_usage_ids if u.period_start == period_start}
        rated = []
        for charge in self._fc_charges():
            usage = usages.get(charge.metric_id, self.env["fusion.billing.usage"])
            rated.append((charge, usage, charge._rate(usage.quantity or 0, events_count=usage.events_count or 0)))
        return rated

    def _fc_taxes(self, product, amount):
        """Tax amount of ``amount`` on ``product``, as the invoice line will compute it."""
        taxes = product.taxes_id.filtered(lambda t: t.company_id == self.company_id)
        taxes = self.fiscal_position_id.map_tax(taxes) if self.fiscal_position_id else taxes
        if not taxes:
            return 0.0
        result = taxes.compute_all(float(amount), self.currency_id, 1.0, product=product, partner=self.partner_id)
        return result["total_included"] - result["total_excluded"]

    def _fc_usage_values(self, period_start=None, apply_taxes=True):
        """Lago ``customer_usage`` of one period (default: the open one), rated to the cent."""
        self.ensure_one()
        start, end = self._fc_period(period_start)
        currency = self.currency_id
        charges_usage, amount, taxes = [], 0, 0.0
        for charge, usage, rating in self._fc_rated_usage(start):
            amount += rating.amount_minor
            taxes += self._fc_taxes(charge._fc_product(), rating.amount) if apply_taxes else 0.0
            charges_usage.append({
                "units": rating.units,
                "events_count": usage.events_count or 0,
                "amount_cents": rating.amount_minor,
                "amount_currency": currency.name,
                "charge": {"lago_id": str(charge.id), "code": charge.code or charge.metric_id.code,
                           "charge_model": charge.charge_model,
                           "invoice_display_name": charge.invoice_display_name or charge.metric_id.name},
                "billable_metric": {"lago_id": str(charge.metric_id.id), "name": charge.metric_id.name,
                                    "code": charge.metric_id.code,
                                    "aggregation_type": f"{charge.metric_id.aggregation}_agg"},
            })
        taxes_cents = money.to_minor_units(taxes, currency.decimal_places)
        return {
            "from_datetime": datetime.combine(start, time.min),
            "to_datetime": datetime.combine(end, time.min),
            "issuing_date": end,
            "currency": currency.name,
            "amount_cents": amount,
            "taxes_amount_cents": taxes_cents,
            "total_amount_cents": amount + taxes_cents,
            "charges_usage": charges_usage,
        }

    def _fc_past_usage_values(self, metric_code=None, periods_count=None):
        """Lago ``usage_periods`` of closed periods, newest first."""
        self.ensure_one()
        current_start = self._fc_period()[0]
        starts = sorted({u.period_start for u in self.x_fc_usage_ids if u.period_start < current_start}, reverse=True)
        if periods_count and str(periods_count).isdigit():
            starts = starts[:int(periods_count)]
        periods_values = []
        for start in starts:
            values = self._fc_usage_values(start)
            if metric_code:
                values["charges_usage"] = [c for c in values["charges_usage"] if c["billable_metric"]["code"] == metric_code]
            periods_values.append(values)
        return periods_values

    # ------------------------------------------------------------------ Lago API
    def _api_status(self):
        """Lago status: shadow drafts count as active, since the app runs them."""
        self.ensure_one()
        if self.state == "cancel" and self.x_fc_terminated_at:
            return "canceled"
        if self.x_fc_terminated_at:
            return "terminated"
        if self.start_date and self.start_date > fields.Date.context_today(self):
            return "pending"
        return "active"

    @api.model
    def _api_domain(self, service, statuses=("active",)):
        today = fields.Date.context_today(self)
        by_status = {
            "active": ["&", ("x_fc_terminated_at", "=", False), "|", ("start_date", "=", False), ("start_date", "<=", today)],
            "pending": ["&", ("x_fc_terminated_at", "=", False), ("start_date", ">", today)],
            "terminated": ["&", ("x_fc_terminated_at", "!=", False), ("state", "!=", "cancel")],
            "canceled": ["&", ("x_fc_terminated_at", "!=", False), ("state", "=", "cancel")],
        }
        unknown = set(statuses or ()) - set(by_status)
        if unknown:
            raise errors.Invalid({"status": ["value_is_invalid"]})
        status_domain = []
        for status in statuses or by_status:
            status_domain = (["|"] + status_domain if status_domain else []) + by_status[status]
        return [("x_fc_service_id", "=", service.id), ("is_subscription", "=", True)] + status_domain

    @api.model
    def _api_find(self, service, external_id, statuses=("active",)):
        domain = self._api_domain(service, statuses) + [("x_fc_external_id", "=", external_id)]
        return self.search(domain, order="id desc", limit=1)

    @api.model
    def _api_create_subscription(self, service, clean):
        """Lago ``POST /subscriptions``: idempotent on external id; another plan switches plans.

        Unknown customers are created on the fly (as Lago does). In shadow mode the order
        stays a draft quotation; in live mode it is confirmed, which starts native billing.
        """
        link_model = self.env["fusion.billing.account.link"]
        link = link_model._api_find(service, clean["external_customer_id"]) or \
            link_model._api_upsert(service, {"external_id": clean["external_customer_id"]})
        plan = self.env["sale.subscription.plan"].search(
            [("x_fc_service_id", "=", service.id), ("x_fc_plan_code", "=", clean["plan_code"])], limit=1)
        if not plan:
            raise errors.NotFound("plan")
        current = self._api_find(service, clean["external_id"], statuses=("active", "pending"))
        if current and current.x_fc_account_link_id != link:
            raise errors.Invalid({"external_id": ["value_already_exist"]})
        if current and current.plan_id == plan:
            return current
        previous_code = current.plan_id.x_fc_plan_code if current else False
        if current:
            current._api_terminate()
        start = clean.get("subscription_at")
        order = self.create({
            "partner_id": link.partner_id.id,
            "company_id": service.company_id.id,
            "pricelist_id": service._fc_pricelist().id,
            "plan_id": plan.id,
            "x_fc_service_id": service.id,
            "x_fc_account_link_id": link.id,
            "x_fc_external_id": clean["external_id"],
            "x_fc_previous_plan_code": previous_code,
            "client_order_ref": clean.get("name") or False,
            "start_date": start.date() if start else fields.Date.context_today(self),
            "end_date": clean["ending_at"].date() if clean.get("ending_at") else False,
            "order_line": [Command.create(plan._fc_base_fee_line_values())] if plan.x_fc_product_id else [],
        })
        if not service._is_shadow():
            order.action_confirm()
        order._fc_notify("subscription.started")
        return order

    def _api_terminate(self, on_termination_invoice="generate"):
        """Lago ``DELETE /subscriptions/{id}``: terminate (or cancel a pending one).

        Live: the native subscription is closed; shadow: only marked terminated, nothing
        is confirmed, cancelled on the customer's side, invoiced or charged.
        """
        for order in self:
            pending = order._api_status() == "pending"
            order.x_fc_terminated_at = fields.Datetime.now()
            order.flush_recordset(["x_fc_terminated_at"])
            if pending:
                order.with_context(disable_cancel_warning=True).action_cancel()
            elif not order.x_fc_service_id._is_shadow() and order.subscription_state in ("3_progress", "4_paused"):
                order.set_close()
            if on_termination_invoice != "skip":
                order._fc_bill_termination()
            order._fc_notify("subscription.terminated")
        return True

    def _fc_bill_termination(self):
        """Close the period cut short by termination now (as Lago bills a terminated subscription at once)."""
        for order in self.filtered("x_fc_usage_due_date"):
            order._fc_close_due_periods(until=fields.Date.context_today(order), include_current=True)

    # ------------------------------------------------------------------ period close
    @api.model
    def _cron_close_usage_periods(self, batch_size=200):
        """Close every usage period that has ended, a batch of subscriptions at a time.

        Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several workers share the work
        without ever closing one subscription twice; each batch commits, so a crash
        resumes where it stopped and never bills a period twice.
        """
        today = fields.Date.context_today(self)
        conflicts = 0
        while True:
            orders = self.browse(batch_jobs.claim(self.env, """
                SELECT id FROM sale_order
                 WHERE x_fc_usage_due_date <= %s
                 ORDER BY x_fc_usage_due_date, partner_id, id  -- a customer's subscriptions together
                 LIMIT %s FOR UPDATE SKIP LOCKED""", (today, batch_size)))
            if not orders:
                return
            try:
                orders._fc_close_due_periods(until=today)
                if not batch_jobs.commit_batch(self.env, len(orders)):
                    return  # out of time: the next run resumes here
                conflicts = 0
            except batch_jobs.CONFLICTS as error:  # e.g. both workers invoicing one new customer
                conflicts = batch_jobs.retry_after_conflict(self.env, error, conflicts)
                _logger.warning("Period close: batch rolled back after a conflict with another worker, "
                                "claiming it again: %s", str(error).strip())

    def _fc_close_due_periods(self, until, include_current=False):
        """Close these subscriptions' periods that ended by ``until`` (and the current one if asked).

        Each round closes the oldest open period of every subscription still due, all billed
        together; a subscription several periods behind catches up over several rounds.
        """
        moves = self.env["account.move"]
        due = self
        while due := due.filtered(lambda o: o.x_fc_usage_due_date and (o.x_fc_usage_due_date <= until or include_current)):
            bounds = {order: order._fc_period(order.x_fc_usage_closed_until or order._fc_anchor()) for order in due}
            moves |= due._fc_close_periods(bounds)
            for end in {end for _start, end in bounds.values()}:
                due.filtered(lambda o: bounds[o][1] == end).write({"x_fc_usage_closed_until": end})
            include_current = False
        return moves

    def _fc_close_periods(self, bounds):
        """Rate one period per subscription (``bounds``: order → (start, end)); in live mode bill
        each on its service's own invoice, in shadow only record it. Returns the posted invoices."""
        usage_model = self.env["fusion.billing.usage"]
        rated = {order: order._fc_rated_usage(bounds[order][0]) for order in self}
        missing = [(order, charge) for order in self for charge, usage, _rating in rated[order] if not usage]
        created = iter(usage_model.create([{
            "subscription_id": order.id, "metric_id": charge.metric_id.id,
            "period_start": bounds[order][0], "period_end": bounds[order][1],
        } for order, charge in missing]))
        rated = {order: [(charge, usage or next(created), rating) for charge, usage, rating in rows]
                 for order, rows in rated.items()}
        usage_model._fc_record_amounts({usage.id: rating.amount for rows in rated.values()
                                        for _charge, usage, rating in rows}, state="closed")
        billable = {order: [row for row in rows if row[2].amount_minor] for order, rows in rated.items()
                    if not order.x_fc_service_id._is_shadow()}
        return self.filtered(lambda order: billable.get(order))._fc_invoice_usage(bounds, billable)

    @api.model
    def _fc_tracked_computed_fields(self):
        """Stored computed fields of an order that its chatter tracks (its totals among them)."""
        return [name for name, field in self._fields.items()
                if field.store and field.compute and getattr(field, "tracking", None)]

    # Odoo's invoice creation slows down per invoice when too many are created in one call.
    _FC_INVOICE_CHUNK = 50

    def _fc_invoice_usage(self, bounds, rated):
        """Bill the rated usage the native way: usage order lines invoiced on the service's own
        invoice. Subscriptions of one customer closing on the same day share an invoice, grouped
        as Odoo's own invoicing groups orders (``_get_invoice_grouping_keys``) and as Lago does;
        invoices are created a chunk at a time, then all posted."""
        if not self:
            return self.env["account.move"]
        today = fields.Date.context_today(self)
        self = self.with_context(fc_distribution_memo={})  # analytic defaults, looked up once per batch
        to_bill = [(order, charge, usage, rating) for order in self for charge, usage, rating in rated[order]]
        products = {charge: charge._fc_product() for charge in {row[1] for row in to_bill}}
        # The usage lines and their invoices are the record of what was billed: the orders'
        # totals are recomputed without logging a tracked "Total" change on every subscription.
        untracked = self.with_context(tracking_disable=True)
        order_lines = untracked.env["sale.order.line"].with_context(sale_no_log_for_new_lines=True).create([{
            "order_id": order.id,
            "product_id": products[charge].id,
            "name": charge._fc_invoice_label(rating, bounds[order][0], bounds[order][1] - timedelta(days=1)),
            "product_uom_qty": 1,
            "price_unit": float(rating.amount),
            "sequence": 1000,
        } for order, charge, _usage, rating in to_bill])
        untracked._recompute_recordset(self._fc_tracked_computed_fields())
        billed = defaultdict(list)  # order → [(usage, order line)]
        for (order, _charge, usage, _rating), line in zip(to_bill, order_lines):
            billed[order].append((usage, line))
        groups = defaultdict(lambda: self.browse())
        for order in self:
            key = (order.x_fc_service_id, min(bounds[order][1], today)) + tuple(
                order[name] for name in order._get_invoice_grouping_keys())
            groups[key] |= order
        move_values = [self._fc_usage_invoice_values(orders, invoice_date, billed)
                       for (_service, invoice_date, *_rest), orders in groups.items()]
        moves = self.env["account.move"]
        for i in range(0, len(move_values), self._FC_INVOICE_CHUNK):
            chunk = self.env["account.move"].sudo().with_context(mail_create_nolog=True).create(
                move_values[i:i + self._FC_INVOICE_CHUNK])
            invoice_line_of = {sale_line: line for line in chunk.invoice_line_ids for sale_line in line.sale_line_ids}
            usage_lines = {usage.id: invoice_line_of[line].id for order in chunk.invoice_line_ids.sale_line_ids.order_id
                           for usage, line in billed[order]}
            self.env["fusion.billing.usage"]._fc_record_amounts(
                dict.fromkeys(usage_lines), state="billed", invoice_lines=usage_lines)
            moves |= chunk
        # Posting numbers the invoices, which locks the journal's sequence until the batch
        # commits (other workers' posting waits): post last, with everything else written.
        self.env.flush_all()
        moves.action_post()
        return moves

    @api.model
    def _fc_usage_invoice_values(self, orders, invoice_date, billed):
        """Values of one usage invoice for ``orders`` (same customer, service and day), as
        ``sale.order._create_invoices`` merges grouped orders."""
        values = orders[0]._prepare_invoice()
        values.update({
            "x_fc_service_id": orders[0].x_fc_service_id.id,
            "invoice_date": invoice_date,
            "access_token": str(uuid.uuid4()),  # the portal link in the invoice.created webhook
            "invoice_origin": ", ".join(orders.mapped("name")),
            "ref": ", ".join(dict.fromkeys(order.client_order_ref or order.name for order in orders))[:2000],
            "payment_reference": orders[0].reference if len(set(orders.mapped("reference"))) == 1 else False,
            "invoice_line_ids": [Command.create(self._fc_usage_invoice_line_values(line))
                                 for order in orders for _usage, line in billed[order]],
        })
        return values

    @api.model
    def _fc_usage_invoice_line_values(self, sale_line):
        """Invoice line of a usage order line. In the company's currency its journal amount is
        given as the tax sync will compute it (minus the untaxed subtotal), which spares Odoo
        rewriting every line after creating it; a differing amount (e.g. a tax included in the
        price) is still corrected by that sync."""
        values = sale_line._prepare_invoice_line(quantity=1)
        currency = sale_line.currency_id
        if currency == sale_line.company_id.currency_id:
            subtotal = values["price_unit"] * values["quantity"] * (1 - (values["discount"] or 0.0) / 100)
            values["balance"] = values["amount_currency"] = -currency.round(subtotal)
        return values

    def _api_values(self, with_plan=False):
        self.ensure_one()
        plan = self.plan_id
        now = fields.Datetime.now()
        status = self._api_status()
        period_start, period_end = self._fc_period(min(now, self.x_fc_terminated_at or now)) \
            if status in ("active", "terminated") else (None, None)
        start = datetime.combine(self._fc_anchor(), time.min)
        values = {
            "lago_id": str(self.id),
            "external_id": self.x_fc_external_id,
            "lago_customer_id": str(self.x_fc_account_link_id.id),
            "external_customer_id": self.x_fc_account_link_id.external_id,
            "name": self.client_order_ref or plan.name,
            "plan_code": plan.x_fc_plan_code,
            "plan_amount_cents": plan._fc_amount_cents(),
            "plan_amount_currency": plan._fc_currency().name,
            "status": status,
            "billing_time": "anniversary",
            "subscription_at": start,
            "started_at": start if status != "pending" else None,
            "trial_ended_at": None,
            "ending_at": datetime.combine(self.end_date, time.min) if self.end_date else None,
            "terminated_at": self.x_fc_terminated_at if status == "terminated" else None,
            "canceled_at": self.x_fc_terminated_at if status == "canceled" else None,
            "created_at": self.create_date,
            "previous_plan_code": self.x_fc_previous_plan_code or None,
            "next_plan_code": None,
            "downgrade_plan_date": None,
            "current_billing_period_started_at": datetime.combine(period_start, time.min) if period_start else None,
            "current_billing_period_ending_at": datetime.combine(period_end, time.min) if period_end else None,
        }
        if with_plan:
            values["plan"] = plan._api_values()
        return values

    def _fc_webhook_object(self):
        values = lago.subscription(self._api_values(with_plan=True))
        values["customer"] = self.x_fc_account_link_id._fc_webhook_object() if self.x_fc_account_link_id else None
        return values

    def _get_invoice_grouping_keys(self, *args, **kwargs):
        """Never one usage invoice for two app accounts (e.g. two accounts sharing a contact): the
        API lists an account's invoices, and each must bill that account only. (The period close
        groups orders by these fields; Odoo's own grouping reads them from invoice values, which
        do not carry it, so it is unaffected.)"""
        return super()._get_invoice_grouping_keys(*args, **kwargs) + ["x_fc_account_link_id"]

    def _fc_notify(self, webhook_type):
        """Queue an outbound webhook about these records to their app."""
        for order in self:
            self.env["fusion.billing.webhook"]._enqueue(order.x_fc_service_id, webhook_type, order)
