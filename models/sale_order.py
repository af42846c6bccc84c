import logging
from html import escape
from datetime import datetime, time, timedelta

from markupsafe import Markup

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError
from odoo.fields import Domain
from odoo.tools import SQL

from ..core import errors, lago, money, nexacloud, periods, reconcile
from ..services.billing_cycle import MAX_BILLING_ATTEMPTS, BillingCycle, last_served_day
from ..services.subscription_lifecycle import SubscriptionLifecycle
from .code_fields import as_code, check_code_fields

_logger = logging.getLogger(__name__)

# Written by code only (``code_fields``): when the app subscription ended (frees its external id,
# bills its final period), how far its usage is closed, its status and trial in the app (what Odoo
# bills and activates), the order that carries it on, and whether the app heard of that; the plan
# the app is told it changed from and its Stripe id (what the app sees); why its usage close failed
# and how often (the job stops retrying after a day: only Retry Billing, as code, resets it).
CODE_FIELDS = frozenset({"x_fc_terminated_at", "x_fc_usage_closed_until", "x_fc_source_status", "x_fc_trial_end",
                         "x_fc_successor_id", "x_fc_handover_notified", "x_fc_previous_plan_code",
                         "x_fc_stripe_subscription_id", "x_fc_billing_issue", "x_fc_billing_issue_at",
                         "x_fc_billing_attempts"})
# Which app and account an order is, and its id there (the app lists it, its events bill it): set by
# code, or carried by the renewal or upsell quotation of an app subscription (Odoo's own steps).
APP_FIELDS = frozenset({"x_fc_service_id", "x_fc_account_link_id", "x_fc_external_id"})


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
        string="Status in App", copy=False, readonly=True, help="Status in the app's own billing (e.g. Stripe's), for information.")
    x_fc_stripe_subscription_id = fields.Char(
        string="Stripe Subscription (info)", copy=False, readonly=True, help="Informational only: never used to charge.")
    x_fc_trial_end = fields.Date(
        string="Trial Ends", copy=False, readonly=True,
        help="The app's free trial ends on this day (copied by the import): Odoo bills nothing before it, "
             "neither the fee nor the trial's usage. Its first invoice is on that day, when Stripe would "
             "have charged it first.")
    x_fc_terminated_at = fields.Datetime(string="Terminated At", copy=False, readonly=True)
    x_fc_previous_plan_code = fields.Char(string="Previous Plan Code", copy=False, readonly=True)
    x_fc_usage_ids = fields.One2many("fusion.billing.usage", "subscription_id", string="Usage")
    x_fc_current_usage_html = fields.Html(
        string="Current Usage", compute="_compute_x_fc_current_usage_html", sanitize=False,
        help="The open period's usage rated live, as the app's current_usage call and the invoice show it.")
    x_fc_usage_closed_until = fields.Date(
        string="Usage Closed Until", copy=False, readonly=True,
        help="Usage periods starting before this date are closed (billed, or recorded in shadow).")
    x_fc_usage_due_date = fields.Date(
        string="Next Usage Close", compute="_compute_x_fc_usage_due_date", store=True, index="btree_not_null",
        help="End of the first open usage period: it is closed (and billed on the native invoice due "
             "that day) from that day.")
    x_fc_period_anchor = fields.Date(
        string="Billing Grid Anchor", compute="_compute_x_fc_period_anchor", store=True,
        help="Usage periods follow the native invoicing periods: the grid of the Date of Next Invoice, "
             "anchored at or before the start.")
    x_fc_successor_id = fields.Many2one(
        "sale.order", string="Continued By", readonly=True, copy=False, index="btree_not_null",
        help="The renewal (or scheduled downgrade) that carries this app subscription on; its start ends this order.")
    x_fc_handover_notified = fields.Boolean(
        string="Hand-over Notified", readonly=True, copy=False,
        help="The app was told (webhooks) that the order continuing this subscription took over.")
    x_fc_billing_issue = fields.Text(
        string="Billing Issue", readonly=True, copy=False,
        help="Why the last usage close of this subscription failed. It was set aside (the rest of its batch "
             "billed) and is retried by the next runs (see Failed Billing Attempts).")
    x_fc_billing_issue_at = fields.Datetime(string="Set Aside At", readonly=True, copy=False, index="btree_not_null")
    x_fc_billing_attempts = fields.Integer(
        string="Failed Billing Attempts", readonly=True, copy=False,
        help="Failed usage closes in a row. After a day of them the job stops retrying: fix the reason, then "
             "press Retry Billing.")
    x_fc_billing_retry_stopped = fields.Boolean(compute="_compute_x_fc_billing_retry_stopped")
    x_fc_recent_usage_ids = fields.Many2many(
        "fusion.billing.usage", string="Recent Usage", compute="_compute_x_fc_recent_usage_ids",
        help="Usage of the open and the last closed period (all periods: Usage History).")
    x_fc_usage_count = fields.Integer(string="Usage Periods", compute="_compute_x_fc_recent_usage_ids")

    _x_fc_external_uniq = models.UniqueIndex(
        "(x_fc_service_id, x_fc_external_id) WHERE x_fc_external_id IS NOT NULL AND x_fc_terminated_at IS NULL "
        "AND state != 'cancel'",  # a cancelled order (the native Cancel button too) frees its external id
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

    @api.depends("x_fc_billing_attempts")
    def _compute_x_fc_billing_retry_stopped(self):
        for order in self:
            order.x_fc_billing_retry_stopped = order.x_fc_billing_attempts >= MAX_BILLING_ATTEMPTS

    def _fc_fee_lines(self):
        """This subscription's recurring fee lines: their taxes are what a plan change's credit, which
        gives part of a fee back, is taxed with."""
        return self.order_line.filtered(lambda line: line.product_id.recurring_invoice and not line.x_fc_line_kind)

    def action_fc_retry_billing(self):
        """Retry Billing: the next run of the usage job tries these set-aside subscriptions again."""
        if not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_user"):
            raise AccessError(self.env._("Only Fusion Billing users may retry a subscription's billing."))
        as_code(self.filtered("x_fc_billing_issue_at")).write({"x_fc_billing_attempts": 0})  # the person's own rights
        return True

    def _fc_portal_usage(self):
        """The open period's usage for the customer portal (plain values), or None."""
        self.ensure_one()
        if not (self.x_fc_service_id and self.plan_id and self.state == "sale") or self._api_status() != "active":
            return None
        values = self._fc_usage_values(apply_taxes=False)
        fmt = lambda cents: self.currency_id.format(float(money.from_minor_units(cents, self.currency_id.decimal_places)))  # noqa: E731
        return {
            "period": f"{values['from_datetime']:%Y-%m-%d} to {values['to_datetime'] - timedelta(days=1):%Y-%m-%d}",
            "rows": [{"name": c["charge"]["invoice_display_name"], "units": lago.units(c["units"]),
                      "amount": fmt(c["amount_cents"])} for c in values["charges_usage"]],
            "total": fmt(values["amount_cents"]),
        }

    # ------------------------------------------------------------------ periods
    # Usage periods are the native invoicing periods: a period ends on the Date of Next Invoice of
    # the invoice that bills it (in arrears, next to the fee of the next period, billed in advance).
    def _fc_start(self):
        self.ensure_one()
        return self.start_date or self.date_order.date()

    @api.depends("x_fc_service_id", "next_invoice_date", "last_invoice_date", "start_date", "date_order",
                 "plan_id.billing_period_unit", "plan_id.billing_period_value")
    def _compute_x_fc_period_anchor(self):
        for order in self:
            plan = order.plan_id
            if not (order.x_fc_service_id and plan and (order.start_date or order.date_order)):
                order.x_fc_period_anchor = False
                continue
            start = order._fc_start()
            # Kept on the grid of the start (or of the last invoice) while the next invoice is on it:
            # a month-end date alone (February 28) would move it (grid_anchor).
            order.x_fc_period_anchor = periods.grid_anchor(
                order.next_invoice_date or start, plan.billing_period_unit, plan.billing_period_value, start,
                prefer=(order.last_invoice_date,))

    @api.depends("x_fc_service_id", "plan_id", "x_fc_period_anchor", "x_fc_usage_closed_until",
                 "x_fc_terminated_at", "state", "subscription_state")
    def _compute_x_fc_usage_due_date(self):
        for order in self:
            if not (order.x_fc_service_id and order.plan_id and order.is_subscription) or order.state == "cancel" \
                    or order.subscription_state in ("2_renewal", "7_upsell"):
                order.x_fc_usage_due_date = False
                continue
            closed_until = order.x_fc_usage_closed_until
            start, end = order._fc_period(closed_until or order._fc_start())
            ended = order.x_fc_terminated_at
            if ended and datetime.combine(closed_until or start, time.min) >= ended:
                order.x_fc_usage_due_date = False  # nothing served after the last closed period
            else:
                order.x_fc_usage_due_date = min(end, ended.date()) if ended else end

    def _fc_anchor(self):
        self.ensure_one()
        return self.x_fc_period_anchor or self._fc_start()

    def _fc_period(self, at=None):
        """(start, end exclusive) of the billing period containing ``at`` (default: now)."""
        self.ensure_one()
        plan = self.plan_id
        at = at or fields.Datetime.now()
        return periods.period_bounds(self._fc_anchor(), plan.billing_period_unit, plan.billing_period_value, at)

    def _fc_first_billed_day(self):
        """The first day Odoo bills: the start, or the end of the app's free trial."""
        self.ensure_one()
        start = self._fc_start()
        return max(start, self.x_fc_trial_end) if self.x_fc_trial_end else start

    def _fc_never_billed(self):
        """A draft copied from an app subscription that never started (Stripe's ``incomplete``: its
        first payment did not go through, Stripe bills nothing): activation never confirms it."""
        self.ensure_one()
        return self.state in ("draft", "sent") and self.x_fc_source_status in nexacloud.NOT_STARTED_STATUSES

    def _fc_renewals(self, period_start, period_end):
        """Start dates of the billing periods Odoo bills (in advance) inside ``[period_start, period_end)``:
        its own billing grid (``_fc_anchor``, through the Date of Next Invoice, where its usage periods
        are too), from its first billed day, before its end date or termination. What it would bill
        had it been live since its start; nothing for a draft that is never activated."""
        self.ensure_one()
        if self._fc_never_billed():
            return ()
        plan = self.plan_id
        ends = [value for value in (self.end_date, self.x_fc_terminated_at) if value]  # it renews before them
        return reconcile.odoo_renewals(
            self._fc_anchor(), plan.billing_period_unit, plan.billing_period_value, period_start, period_end,
            until=min(ends, key=fields.Date.to_date) if ends else None, since=self._fc_first_billed_day())

    def _fc_last_day(self, period_end):
        """Last day of the period ending ``period_end`` that this subscription served."""
        self.ensure_one()
        return last_served_day(self.x_fc_terminated_at, period_end)

    def _fc_bills_usage(self):
        """Whether closing this subscription's usage bills it (a live, confirmed subscription) or
        only records it (shadow service, or a draft not activated yet)."""
        self.ensure_one()
        return self.state == "sale" and not self.x_fc_service_id._is_shadow()

    def _fc_usage_carrier(self):
        """The order whose next native invoice carries this subscription's usage: itself, or the
        running renewal that continues it once it is renewed, if it bills in the same currency
        (billing_cycle's claims follow the same rule: ``CARRIED_BY_SUCCESSOR``)."""
        self.ensure_one()
        successor = self.x_fc_successor_id
        if successor and successor.state == "sale" and successor.subscription_state in ("3_progress", "4_paused") \
                and successor.currency_id == self.currency_id:
            return successor
        return self  # (a successor in another currency: the usage is invoiced in its own, as the plan-change credit)

    @api.depends("x_fc_usage_ids.period_start")
    def _compute_x_fc_recent_usage_ids(self):
        for order in self:
            rows = order.x_fc_usage_ids
            order.x_fc_usage_count = len(rows)
            if not (order.plan_id and order.id and rows):
                order.x_fc_recent_usage_ids = rows
                continue
            current_start = order._fc_period(min(fields.Datetime.now(), order.x_fc_terminated_at or fields.Datetime.now()))[0]
            plan = order.plan_id
            cutoff = periods.add_period(current_start, plan.billing_period_unit, plan.billing_period_value, -1)
            order.x_fc_recent_usage_ids = rows.filtered(lambda u: u.period_start >= cutoff)

    def action_view_usage_history(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id("fusion_centralize_billing.fusion_billing_usage_action")
        action.update(domain=[("subscription_id", "=", self.id)], context={"search_default_group_by_period": 1})
        return action

    # ------------------------------------------------------------------ rating
    def _fc_charges(self):
        self.ensure_one()
        return self.plan_id.x_fc_charge_ids.filtered("active")

    def _fc_rated_usage(self, period_start, live=None):
        """[(charge, usage row or empty, rating)] of one period: what current usage shows and the invoice bills.

        Units include the usage deltas not folded into the rows yet (``fusion.billing.usage._fc_live_totals``;
        ``live``: those totals, read beforehand for many subscriptions at once)."""
        self.ensure_one()
        usages = {u.metric_id: u for u in self.x_fc_usage_ids if u.period_start == period_start} if live is None else {}
        live = self.env["fusion.billing.usage"]._fc_live_totals(self, period_start) if live is None else live
        rated = []
        for charge in self._fc_charges():
            usage = usages.get(charge.metric_id, self.env["fusion.billing.usage"])
            units, count = live.get(charge.metric_id.id, (0, 0))
            rated.append((charge, usage, charge._rate(units, events_count=count)))
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
        live = self.env["fusion.billing.usage"]._fc_live_totals(self, start)
        for charge, _usage, rating in self._fc_rated_usage(start):
            amount += rating.amount_minor
            taxes += self._fc_taxes(charge._fc_product(), rating.amount) if apply_taxes else 0.0
            charges_usage.append({
                "units": rating.units,
                "events_count": live.get(charge.metric_id.id, (0, 0))[1],
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
        """Lago ``usage_periods`` of closed periods, newest first (``periods_count``: an int, the latest ones)."""
        self.ensure_one()
        current_start = self._fc_period()[0]
        starts = sorted({u.period_start for u in self.x_fc_usage_ids if u.period_start < current_start}, reverse=True)
        if periods_count:
            starts = starts[:periods_count]
        periods_values = []
        for start in starts:
            values = self._fc_usage_values(start)
            if metric_code:
                values["charges_usage"] = [c for c in values["charges_usage"] if c["billable_metric"]["code"] == metric_code]
            periods_values.append(values)
        return periods_values

    # ------------------------------------------------------------------ Lago API
    def _api_status(self):
        """Lago status from the native state: churned (however it was closed) or past its
        termination is *terminated*, a cancelled order *canceled* (but *terminated* when it was
        cancelled once started: ``_api_domain``), a future start *pending*. Shadow drafts count
        as active, since the app runs them."""
        self.ensure_one()
        if self.state == "cancel":
            ended = self.x_fc_terminated_at
            return "terminated" if ended and ended.date() >= self._fc_start() else "canceled"
        if self.subscription_state == "6_churn" or (
                self.x_fc_terminated_at and self.x_fc_terminated_at <= fields.Datetime.now()):
            return "terminated"
        if self.start_date and self.start_date > fields.Date.context_today(self):
            return "pending"
        return "active"

    @api.model
    def _api_domain(self, service, statuses=("active",)):
        today, now = fields.Date.context_today(self), fields.Datetime.now()
        running = ["&", ("state", "!=", "cancel"), "&", ("subscription_state", "!=", "6_churn"),
                   "|", ("x_fc_terminated_at", "=", False), ("x_fc_terminated_at", ">", now)]
        # A person's Cancel of a subscription that had started terminates it (Lago has no cancel of
        # an active subscription); cancelled before its start, it is canceled (_api_status).
        cancelled_once_started = Domain("id", "any!", SQL(
            "SELECT id FROM sale_order WHERE state = 'cancel' "
            "AND x_fc_terminated_at >= COALESCE(start_date, date_order::date)"))
        by_status = {
            "active": ["&"] + running + ["|", ("start_date", "=", False), ("start_date", "<=", today)],
            "pending": ["&"] + running + [("start_date", ">", today)],
            "terminated": ["|", "&", ("state", "!=", "cancel"), "|", ("subscription_state", "=", "6_churn"),
                           "&", ("x_fc_terminated_at", "!=", False), ("x_fc_terminated_at", "<=", now),
                           cancelled_once_started],
            "canceled": ["&", ("state", "=", "cancel"), "!", cancelled_once_started],
        }
        unknown = set(statuses or ()) - set(by_status)
        if unknown:
            raise errors.Invalid({"status": ["value_is_invalid"]})
        status_domain = []
        for status in statuses or by_status:
            status_domain = (["|"] + status_domain if status_domain else []) + by_status[status]
        # Renewal quotations and upsell orders are Odoo's own steps, not the app's subscriptions.
        return [("x_fc_service_id", "=", service.id), ("is_subscription", "=", True),
                ("subscription_state", "not in", ("2_renewal", "7_upsell"))] + status_domain

    @api.model
    def _api_find(self, service, external_id, statuses=("active",)):
        domain = self._api_domain(service, statuses) + [("x_fc_external_id", "=", external_id)]
        return self.search(domain, order="id desc", limit=1)

    @api.model
    def _api_create_subscription(self, service, clean):
        """Lago ``POST /subscriptions``: idempotent on external id; another plan is an upgrade
        (at once, with a prorated credit) or a downgrade (at the end of the paid period).

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
        current = self._api_find(service, clean["external_id"]) or \
            self._api_find(service, clean["external_id"], statuses=("pending",))
        if current and current.x_fc_account_link_id != link:
            raise errors.Invalid({"external_id": ["value_already_exist"]})
        lifecycle = SubscriptionLifecycle(as_code(self).env)
        if not current:
            return lifecycle.start(service, link, plan, clean)
        return lifecycle.change_plan(as_code(current), plan, clean)  # a retry on the same plan changes nothing

    def _api_terminate(self, on_termination_invoice="generate"):
        """Lago ``DELETE /subscriptions/{id}``: close natively (live), cancel a pending one, bill
        the final period at once. Terminating a terminated subscription changes nothing."""
        SubscriptionLifecycle(as_code(self).env).terminate(as_code(self), bill=on_termination_invoice != "skip")
        return True

    # ------------------------------------------------------------------ native lifecycle
    @api.model_create_multi
    def create(self, vals_list):
        check_code_fields(self, vals_list, CODE_FIELDS, create=True)
        check_code_fields(self, [vals for vals in vals_list if not self._fc_continues_parent(vals)], APP_FIELDS,
                          create=True)
        return super().create(vals_list)

    @api.model
    def _fc_continues_parent(self, vals):
        """Whether ``vals`` (a new order) are a renewal or upsell quotation carrying its subscription's
        app and account, as ``_prepare_upsell_renew_order_values`` gives them (never an external id)."""
        parent = self.browse(vals["subscription_id"]) if vals.get("subscription_id") else self
        return bool(parent) and not vals.get("x_fc_external_id") \
            and (vals.get("x_fc_service_id") or False) == parent.x_fc_service_id.id \
            and (vals.get("x_fc_account_link_id") or False) == parent.x_fc_account_link_id.id

    def write(self, vals):
        check_code_fields(self, [vals], CODE_FIELDS | APP_FIELDS)
        if "subscription_state" not in vals and vals.get("state") != "cancel":
            return super().write(vals)
        before = {order.id: (order.subscription_state, order.state) for order in self if order.x_fc_service_id}
        res = super().write(vals)
        changed = self.filtered(lambda o: o.id in before and (o.subscription_state, o.state) != before[o.id])
        if changed:
            SubscriptionLifecycle(as_code(self).env).follow(as_code(changed))
        return res

    def action_draft(self, *args, **kwargs):
        SubscriptionLifecycle(self.env).refuse_revival(self)
        return super().action_draft(*args, **kwargs)

    def action_confirm(self, *args, **kwargs):
        res = super().action_confirm(*args, **kwargs)
        SubscriptionLifecycle(as_code(self).env).adopt_app_ids(as_code(self))
        return res

    def _prepare_upsell_renew_order_values(self, *args, **kwargs):
        values = super()._prepare_upsell_renew_order_values(*args, **kwargs)
        if self.x_fc_service_id and isinstance(values, dict):
            # The quotation belongs to the app's customer account; the external id follows on confirmation.
            values.update(x_fc_service_id=self.x_fc_service_id.id, x_fc_account_link_id=self.x_fc_account_link_id.id)
        return values

    def _fc_stale_import(self):
        """An imported draft whose Date of Next Invoice has passed: the app (Stripe) has billed that
        renewal since the import, so confirming it would bill the same period again."""
        self.ensure_one()
        return bool(self.next_invoice_date) and self.next_invoice_date < fields.Date.context_today(self)

    def _fc_app_billed_until(self):
        """A draft the app created through the API during the dual run has no Date of Next Invoice:
        the app billed it itself (in advance) until the end of its current period, or of its trial.
        False when it has not started: Odoo bills it from its start."""
        today = fields.Date.context_today(self)
        if self._fc_start() > today:
            return False
        if self.x_fc_trial_end and self.x_fc_trial_end > today:
            return self.x_fc_trial_end
        return self._fc_period()[1]

    def _fc_activate(self):
        """Confirm an imported draft at cutover. The app billed the current period (in advance), so
        Odoo invoices nothing before the imported Date of Next Invoice, and earlier usage periods
        were the app's to bill. A trial bills nothing before it ends: its first invoice is on its
        end (the imported Date of Next Invoice), and the usage periods before it are never billed.
        A draft the app created through the API (no Date of Next Invoice) is billed from the end of
        the period the app billed. A draft whose Date of Next Invoice has passed is refused: import
        it again first."""
        self.ensure_one()
        if self._fc_stale_import():
            raise UserError(self.env._(
                "%(order)s: its Date of Next Invoice (%(date)s) has passed, so the app has billed it since the "
                "import. Import it again before activating it.", order=self.name, date=self.next_invoice_date))
        imported_next = self.next_invoice_date or self._fc_app_billed_until()
        self.action_confirm()
        if imported_next and self.next_invoice_date != imported_next:
            self.next_invoice_date = imported_next
        closed_until = self._fc_period()[0]
        if self.x_fc_trial_end and self.x_fc_trial_end > closed_until:  # activated during the trial
            closed_until = self._fc_period(self.x_fc_trial_end)[0]
        if not self.x_fc_usage_closed_until or self.x_fc_usage_closed_until < closed_until:
            # The periods skipped were the app's to bill (or the trial's): they are closed as recorded,
            # never billed (events sent for them later are late), not left open for a close to bill.
            BillingCycle(self.env).close_skipped(self, closed_until)
            if not self.x_fc_usage_closed_until or self.x_fc_usage_closed_until < closed_until:
                as_code(self).x_fc_usage_closed_until = closed_until

    # ------------------------------------------------------------------ native recurring invoicing
    def _create_recurring_invoice(self, *args, **kwargs):
        """Odoo's recurring run: first close the usage of the subscriptions it is about to invoice,
        so that it rides on their invoice (lines only; no invoice of our own)."""
        BillingCycle(as_code(self).env).before_recurring_invoicing(as_code(self))
        # Invoice lines look their analytic defaults up once per run, not once per line.
        return super(SaleOrder, self.with_context(fc_distribution_memo={}))._create_recurring_invoice(*args, **kwargs)

    def _get_invoiceable_lines(self, *args, **kwargs):
        lines = super()._get_invoiceable_lines(*args, **kwargs)
        return lines.filtered(lambda line: not line.x_fc_line_kind or line.x_fc_pending)

    def _get_update_prices_lines(self, *args, **kwargs):
        return super()._get_update_prices_lines(*args, **kwargs).filtered(lambda line: not line.x_fc_line_kind)

    def _recompute_taxes(self, *args, **kwargs):
        # Update Taxes (e.g. after a new fiscal position) maps the billing lines' taxes too: Odoo's own
        # mapping of code-only fields, written as code with the person's own rights.
        return super(SaleOrder, as_code(self))._recompute_taxes(*args, **kwargs)

    @api.model
    def _cron_close_usage_periods(self, batch_size=200):
        """Close what the native recurring run does not invoice (shadow, drafts, final periods,
        set-aside subscriptions), then charge and e-mail the final invoices."""
        cycle = BillingCycle(as_code(self).env)
        if cycle.close_outside_native_run(batch_size=batch_size):
            cycle.deliver_final_invoices()
        SubscriptionLifecycle(as_code(self).env).notify_handovers()

    @api.model
    def _fc_tracked_computed_fields(self):
        """Stored computed fields of an order that its chatter tracks (its totals among them)."""
        return [name for name, field in self._fields.items()
                if field.store and field.compute and getattr(field, "tracking", None)]

    def _api_values(self, with_plan=False):
        self.ensure_one()
        plan = self.plan_id
        now = fields.Datetime.now()
        status = self._api_status()
        period_start, period_end = self._fc_period(min(now, self.x_fc_terminated_at or now)) \
            if status in ("active", "terminated") else (None, None)
        start = datetime.combine(self._fc_start(), time.min)
        successor = self.x_fc_successor_id
        next_plan = successor.plan_id if successor and successor.state != "cancel" and successor.plan_id != plan \
            and status == "active" else False
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
            "trial_ended_at": datetime.combine(self.x_fc_trial_end, time.min)
            if self.x_fc_trial_end and self.x_fc_trial_end <= fields.Date.context_today(self) else None,
            "ending_at": datetime.combine(self.end_date, time.min) if self.end_date else None,
            "terminated_at": self.x_fc_terminated_at if status == "terminated" else None,
            "canceled_at": self.x_fc_terminated_at if status == "canceled" else None,
            "created_at": self.create_date,
            "previous_plan_code": self.x_fc_previous_plan_code or None,
            "next_plan_code": next_plan.x_fc_plan_code if next_plan else None,
            "downgrade_plan_date": self.x_fc_successor_id.start_date if next_plan else None,
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
        """Never one invoice for two app accounts (e.g. two accounts sharing a contact), when Odoo
        invoices several orders at once (*Create Invoice*): the API lists an account's invoices, and
        each must bill that account only. Odoo groups by these keys of the invoice values, which
        carry the account (``_prepare_invoice``)."""
        return super()._get_invoice_grouping_keys(*args, **kwargs) + ["x_fc_account_link_id"]

    def _prepare_invoice(self, *args, **kwargs):
        values = super()._prepare_invoice(*args, **kwargs)
        if self.x_fc_account_link_id and isinstance(values, dict):
            values["x_fc_account_link_id"] = self.x_fc_account_link_id.id
        return values

    def _fc_notify(self, webhook_type):
        """Queue an outbound webhook about these records to their app."""
        for order in self:
            self.env["fusion.billing.webhook"]._enqueue(order.x_fc_service_id, webhook_type, order)
