import json
from collections import defaultdict
from datetime import date, timedelta
from decimal import Decimal

from odoo import api, fields, models

from ..core import errors, money, periods, reconcile

TOLERANCE_PARAM = "fusion_billing.reconciliation_tolerance"

RECONCILIATION_STATES = [
    ("match", "Match"),
    ("mismatch", "Mismatch"),
    ("missing_in_odoo", "Missing in Odoo"),
    ("missing_in_app", "Missing in app"),
]


class FusionBillingReconciliation(models.Model):
    """Dual-run delta for one service, period, customer and subscription: Odoo (shadow) vs the app."""

    _name = "fusion.billing.reconciliation"
    _description = "Dual-run Reconciliation"
    _inherit = ["mail.thread"]
    _order = "period_start desc, service_id, abs_delta desc, id"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    currency_id = fields.Many2one("res.currency", required=True)
    period_start = fields.Date(required=True, index=True)
    period_end = fields.Date(required=True)
    partner_id = fields.Many2one("res.partner", index=True)
    account_link_id = fields.Many2one("fusion.billing.account.link", index=True)
    subscription_id = fields.Many2one("sale.order", index=True)
    external_subscription_id = fields.Char(required=True, help="The subscription's id in the app.")
    odoo_amount = fields.Monetary(tracking=True, help="What Odoo computed in shadow, before tax.")
    odoo_amount_incl_tax = fields.Monetary(help="What Odoo computed in shadow, tax included.")
    app_amount = fields.Monetary(tracking=True, help="What the app billed for the period.")
    delta = fields.Monetary(tracking=True, help="Odoo minus app.")
    abs_delta = fields.Monetary(compute="_compute_abs_delta", store=True, string="Absolute Delta")
    state = fields.Selection(RECONCILIATION_STATES, required=True, index=True, tracking=True)
    explanation = fields.Text()
    app_reported = fields.Json(
        readonly=True, help="What the app reported for this subscription and period through the API "
                            "(amounts it billed that Odoo cannot derive, e.g. usage Stripe charged).")
    app_reported_text = fields.Text(string="Reported by the app", compute="_compute_app_reported_text")
    run_count = fields.Integer(default=1, help="How many reconciliation runs updated this row.")
    last_run_at = fields.Datetime(default=fields.Datetime.now)

    _row_uniq = models.UniqueIndex(
        "(service_id, period_start, external_subscription_id)",
        "One reconciliation row per service, period and subscription.")

    @api.depends("app_reported")
    def _compute_app_reported_text(self):
        for row in self:
            row.app_reported_text = json.dumps(row.app_reported, indent=2, sort_keys=True) if row.app_reported else False

    @api.depends("delta")
    def _compute_abs_delta(self):
        for row in self:
            row.abs_delta = abs(row.delta)

    def action_view_usage(self):
        """Drill down to the usage rows (rated amounts = the shadow invoice lines) behind Odoo's side."""
        self.ensure_one()
        return {
            "type": "ir.actions.act_window", "name": self.env._("Usage of %s", self.external_subscription_id),
            "res_model": "fusion.billing.usage", "view_mode": "list,pivot,form",
            "domain": [("subscription_id", "=", self.subscription_id.id), ("period_start", ">=", self.period_start),
                       ("period_start", "<", self.period_end)],
        }

    # ------------------------------------------------------------------ runs
    @api.model
    def _run(self, service, period_start, period_end, source_bills=None):
        """Compare, per subscription, what Odoo computed in shadow with what the app billed.

        App side: ``source_bills`` (``core.reconcile.Bill`` per external subscription id,
        e.g. derived from NexaCloud's tables) overlaid with what the app reported through
        the API. Rows are updated in place; each run bumps ``run_count`` and the chatter
        keeps the history of amounts and status.
        """
        tolerance = Decimal(self.env["ir.config_parameter"].sudo().get_param(TOLERANCE_PARAM, "0.01"))
        odoo_bills, orders = self._odoo_bills(service, period_start, period_end)
        existing = {row.external_subscription_id: row for row in self.search(
            [("service_id", "=", service.id), ("period_start", "=", period_start)])}
        app_bills = dict(source_bills or {})
        for key, row in existing.items():
            if row.app_reported:
                app_bills[key] = self._reported_bill(row.app_reported, app_bills.get(key), service)
        links = {link.external_id: link for link in self.env["fusion.billing.account.link"].with_context(
            active_test=False).search([("service_id", "=", service.id)])}
        now = fields.Datetime.now()
        results = reconcile.reconcile(odoo_bills, app_bills, tolerance)
        for result in results:
            key = result["subscription_key"]
            order = orders.get(key)
            link = order.x_fc_account_link_id if order else links.get(str(result["partner_key"]))
            partner = order.partner_id if order else (link.partner_id if link else False)
            currency = self.env["res.currency"].search([("name", "=", result["currency"])], limit=1) \
                or service.currency_id
            values = {
                "period_end": period_end, "partner_id": partner.id if partner else False,
                "account_link_id": link.id if link else False, "subscription_id": order.id if order else False,
                "currency_id": currency.id, "odoo_amount": float(result["odoo_amount"]),
                "odoo_amount_incl_tax": float(result["odoo_amount_incl_tax"]),
                "app_amount": float(result["app_amount"]), "delta": float(result["delta"]),
                "state": result["status"], "explanation": result["explanation"] or False, "last_run_at": now,
            }
            row = existing.get(key)
            if row:
                row.write(dict(values, run_count=row.run_count + 1))
            else:
                self.create(dict(values, service_id=service.id, period_start=period_start,
                                 external_subscription_id=key))
        summary = reconcile.summarise(results)
        service.message_post(body=self._run_note(service, period_start, period_end, summary))
        return summary

    @api.model
    def _run_note(self, service, period_start, period_end, summary):
        """The run's figures, kept in the service's chatter: progress from run to run."""
        counts = summary["counts"]
        return self.env._(
            "Reconciliation run for %(start)s – %(end)s: %(match)s match, %(mismatch)s mismatch, "
            "%(missing_odoo)s missing in Odoo, %(missing_app)s missing in the app; absolute delta %(delta)s %(currency)s.",
            start=period_start, end=period_end - timedelta(days=1), match=counts.get("match", 0),
            mismatch=counts.get("mismatch", 0), missing_odoo=counts.get("missing_in_odoo", 0),
            missing_app=counts.get("missing_in_app", 0), delta=summary["total_abs_delta"], currency=service.currency_id.name)

    @api.model
    def _odoo_bills(self, service, period_start, period_end):
        """Shadow bills of the service's subscriptions active in the period: base fee + rated usage."""
        orders = self.env["sale.order"].search([
            ("x_fc_service_id", "=", service.id), ("is_subscription", "=", True), ("state", "!=", "cancel"),
            ("x_fc_external_id", "!=", False), ("start_date", "<", period_end),
            "|", ("x_fc_terminated_at", "=", False), ("x_fc_terminated_at", ">=", period_start)])
        bills, by_key = {}, {}
        for order in orders:
            plan = order.plan_id
            starts = [start for start, _end in periods.periods_between(
                order._fc_anchor(), plan.billing_period_unit, plan.billing_period_value, period_start, period_end)
                if start >= period_start]
            base = money.to_decimal(plan.x_fc_amount or 0) if starts else Decimal(0)
            tax = order._fc_taxes(plan.x_fc_product_id, base) if base and plan.x_fc_product_id else 0.0
            usage = defaultdict(Decimal)
            for start in starts:
                for charge, _usage, rating in order._fc_rated_usage(start):
                    usage[charge.metric_id.code] += rating.amount
                    tax += order._fc_taxes(charge._fc_product(), rating.amount) if rating.amount else 0.0
            bills[order.x_fc_external_id] = reconcile.Bill(
                partner_key=order.x_fc_account_link_id.external_id or order.partner_id.id,
                currency=order.currency_id.name, plan_code=plan.x_fc_plan_code, base_fee=base, usage=dict(usage),
                tax=money.round_money(tax, order.currency_id.decimal_places))
            by_key[order.x_fc_external_id] = order
        return bills, by_key

    @api.model
    def _reported_bill(self, reported, derived, service):
        """The app's reported amounts (minor units) over what was derived from its tables."""
        decimals = service.currency_id.decimal_places
        base = reported.get("base_fee_cents")
        return reconcile.Bill(
            partner_key=reported.get("external_customer_id") or (derived.partner_key if derived else None),
            currency=reported.get("currency") or (derived.currency if derived else service.currency_id.name),
            plan_code=reported.get("plan_code") or (derived.plan_code if derived else None),
            base_fee=money.from_minor_units(base, decimals) if base is not None else
            (derived.base_fee if derived else Decimal(0)),
            usage={code: money.from_minor_units(cents, decimals) for code, cents in (reported.get("usage") or {}).items()},
            tax=money.from_minor_units(reported["tax_cents"], decimals) if reported.get("tax_cents") is not None else None)

    @api.model
    def _api_report(self, service, bills):
        """Store amounts an app reports it billed (``POST /reconciliation/app_bills``); validated first."""
        clean = [_validate_app_bill(bill, index) for index, bill in enumerate(bills)]
        for bill in clean:
            row = self.search([("service_id", "=", service.id), ("period_start", "=", bill["period_start"]),
                               ("external_subscription_id", "=", bill["external_subscription_id"])])
            stored = dict(bill, period_start=str(bill["period_start"]), period_end=str(bill["period_end"]))
            if row:
                row.app_reported = stored
            else:
                self.create({"service_id": service.id, "period_start": bill["period_start"],
                             "period_end": bill["period_end"], "external_subscription_id": bill["external_subscription_id"],
                             "currency_id": service.currency_id.id, "state": "missing_in_odoo", "app_reported": stored,
                             "run_count": 0,
                             "explanation": "reported by the app; not reconciled yet"})
        return len(clean)

    @api.model
    def _cron_reconcile_shadow_services(self):
        """Reconcile the last closed calendar month of every service still in shadow mode."""
        first = fields.Date.context_today(self).replace(day=1)
        previous = periods.add_period(first, "month", 1, -1)
        for service in self.env["fusion.billing.service"].search([("billing_mode", "=", "shadow")]):
            self._run(service, previous, first, service._fc_source_bills(previous, first))


def _validate_app_bill(bill, index):
    """One reported bill: ids and period required, amounts integer minor units."""
    problems = {}
    if not isinstance(bill, dict):
        raise errors.Invalid({str(index): {"app_bill": ["value_is_invalid"]}})
    if not isinstance(bill.get("external_subscription_id"), str) or not bill["external_subscription_id"].strip():
        problems["external_subscription_id"] = ["value_is_mandatory"]
    dates = {}
    for key in ("period_start", "period_end"):
        try:
            dates[key] = date.fromisoformat(bill.get(key) or "")
        except (TypeError, ValueError):
            problems[key] = ["invalid_date"]
    for key in ("base_fee_cents", "tax_cents"):
        if bill.get(key) is not None and (isinstance(bill[key], bool) or not isinstance(bill[key], int)):
            problems[key] = ["value_is_invalid"]
    usage = bill.get("usage") or {}
    if not isinstance(usage, dict) or any(isinstance(v, bool) or not isinstance(v, int) for v in usage.values()):
        problems["usage"] = ["value_is_invalid"]
    if problems:
        raise errors.Invalid({str(index): problems})
    return {"external_subscription_id": bill["external_subscription_id"].strip(), **dates,
            "external_customer_id": bill.get("external_customer_id"), "currency": bill.get("currency"),
            "plan_code": bill.get("plan_code"), "base_fee_cents": bill.get("base_fee_cents"),
            "tax_cents": bill.get("tax_cents"), "usage": usage}
