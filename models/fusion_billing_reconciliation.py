import json
import logging
import time
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal

import psycopg2
from psycopg2.extras import execute_values

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..core import money, periods, reconcile
from . import batch_jobs

_logger = logging.getLogger(__name__)

TOLERANCE_PARAM = "fusion_billing.reconciliation_tolerance"
RUN_LOCK = 0x46434252  # pg advisory lock key ("FCBR") with the service id: one run per service at a time
CRON_ATTEMPTS = 3      # failed daily runs of one service and period before the job leaves it to a person
INSERT_BATCH = 1000

RECONCILIATION_STATES = [
    ("match", "Match"),
    ("mismatch", "Mismatch"),
    ("missing_in_odoo", "Missing in Odoo"),
    ("missing_in_app", "Missing in app"),
    ("error", "Not reconciled"),
]
REASON_SELECTION = [(code, label) for code, (label, _kind) in reconcile.REASONS.items()]
KIND_SELECTION = [(reconcile.TIMING, "Timing"), (reconcile.REAL, "Real difference")]
# Written on every run (name → SQL type); a change of a TRACKED one is written through the ORM, so the
# row's chatter keeps it, other changes in bulk.
ROW_FIELDS = {"period_end": "date", "partner_id": "int4", "account_link_id": "int4", "subscription_id": "int4",
              "external_customer_id": "varchar", "currency_id": "int4", "odoo_amount": "numeric",
              "odoo_amount_incl_tax": "numeric", "app_amount": "numeric", "delta": "numeric", "state": "varchar",
              "reason": "varchar", "reason_kind": "varchar", "explanation": "text"}
TRACKED = ("odoo_amount", "app_amount", "delta", "state", "reason")


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
    external_customer_id = fields.Char(help="The customer's id in the app (e.g. a NexaCloud user never imported).")
    odoo_amount = fields.Monetary(tracking=True, help="What Odoo computed in shadow, before tax.")
    odoo_amount_incl_tax = fields.Monetary(help="What Odoo computed in shadow, tax included.")
    app_amount = fields.Monetary(tracking=True, help="What the app billed for the period.")
    delta = fields.Monetary(tracking=True, help="Odoo minus app.")
    abs_delta = fields.Monetary(compute="_compute_abs_delta", store=True, string="Absolute Delta")
    state = fields.Selection(RECONCILIATION_STATES, required=True, index=True, tracking=True)
    reason = fields.Selection(
        REASON_SELECTION, index=True, tracking=True,
        help="The one cause of a row that does not match (empty on a match).")
    reason_kind = fields.Selection(
        KIND_SELECTION, string="Kind", index=True,
        help="Timing: both sides bill the same thing at different moments, or Odoo's copy is older than the "
             "app's data. Real difference: after the cutover the customer would be billed differently.")
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
        the API. Every row that does not match gets one reason (``core.reconcile.REASONS``).
        Rows are updated in place: a changed row is written through the ORM (its chatter keeps
        the history of amounts, status and reason), an unchanged one only counts the run, a new
        one is inserted in bulk. The run's figures per reason are kept as a
        ``fusion.billing.reconciliation.run``, with the change from the previous run.
        Returns the summary (``core.reconcile.summarise``) with the run under ``"run"``.
        """
        started = time.monotonic()
        self.check_access("create")
        self._fc_lock(service)
        tolerance = Decimal(self.env["ir.config_parameter"].sudo().get_param(TOLERANCE_PARAM, "0.01"))
        odoo_bills, orders = self._odoo_bills(service, period_start, period_end)
        existing = {row["external_subscription_id"]: row for row in self.search_read(
            [("service_id", "=", service.id), ("period_start", "=", period_start)],
            ["external_subscription_id", "app_reported", "run_count"] + list(ROW_FIELDS), load=None)}
        app_bills = dict(source_bills or {})
        for key, row in existing.items():
            if row["app_reported"]:
                try:
                    app_bills[key] = self._reported_bill(row["app_reported"], app_bills.get(key), service)
                except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError) as error:
                    app_bills[key] = reconcile.error_bill(None, service.currency_id.name,
                                                          f"its reported bill is malformed ({error})")
        links = {link["external_id"]: (link["id"], link["partner_id"]) for link in self.env[
            "fusion.billing.account.link"].with_context(active_test=False).search_read(
            [("service_id", "=", service.id)], ["external_id", "partner_id"], load=None)}
        results = reconcile.reconcile(odoo_bills, app_bills, tolerance, linked=set(links),
                                      imported_at=self._fc_last_import_at(service))
        self._fc_write_rows(service, period_start, period_end, results, existing, orders, links)
        summary = reconcile.summarise(results)
        summary["run"] = self.env["fusion.billing.reconciliation.run"]._fc_record(
            service, period_start, period_end, summary, time.monotonic() - started)
        service.sudo().message_post(body=self._run_note(service, period_start, period_end, summary))  # a log line
        return summary

    @api.model
    def _fc_lock(self, service):
        """One run of a service at a time (the daily job and a person pressing Reconcile)."""
        self.env.cr.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", [RUN_LOCK, service.id])
        if not self.env.cr.fetchone()[0]:
            raise UserError(self.env._("A reconciliation of %s is already running; try again when it is done.",
                                       service.name))

    @api.model
    def _fc_write_rows(self, service, period_start, period_end, results, existing, orders, links):
        """Upsert one row per result (see ``_run``); rows neither side bills any more become matches."""
        currency_ids = {currency.name: currency.id for currency in self.env["res.currency"].with_context(
            active_test=False).search([("name", "in", list({r["currency"] for r in results if r["currency"]}))])}
        now = fields.Datetime.now()
        new, unchanged, quiet = [], [], []
        seen = set()
        for result in results:
            key = result["subscription_key"]
            seen.add(key)
            order = orders.get(key)
            app_customer = result["app_partner_key"]
            link_id, partner_id = (order["link_id"], order["partner_id"]) if order else \
                links.get(str(app_customer), (False, False))
            values = {
                "period_end": period_end, "partner_id": partner_id or False, "account_link_id": link_id or False,
                "subscription_id": order["id"] if order else False,
                "external_customer_id": str(app_customer) if app_customer is not None else False,
                "currency_id": currency_ids.get(result["currency"]) or service.currency_id.id,
                "odoo_amount": float(result["odoo_amount"]),
                "odoo_amount_incl_tax": float(result["odoo_amount_incl_tax"]),
                "app_amount": float(result["app_amount"]), "delta": float(result["delta"]),
                "state": result["status"], "reason": result["reason"] or False,
                "reason_kind": result["kind"] or False, "explanation": result["explanation"] or False,
            }
            row = existing.get(key)
            if row is None:
                new.append((key, values))
            elif _changed(row, {name: values[name] for name in TRACKED}):
                self.browse(row["id"]).write(dict(values, run_count=row["run_count"] + 1, last_run_at=now))
            elif _changed(row, values):
                quiet.append((row["id"], values))
            else:
                unchanged.append(row["id"])
        stale = [row for key, row in existing.items() if key not in seen]
        for row in stale:  # no bill on either side any more: a match
            values = {"odoo_amount": 0.0, "odoo_amount_incl_tax": 0.0, "app_amount": 0.0, "delta": 0.0,
                      "state": "match", "reason": False, "reason_kind": False,
                      "explanation": self.env._("Neither side bills it in this period any more.")}
            if _changed(row, values):
                self.browse(row["id"]).write(dict(values, run_count=row["run_count"] + 1, last_run_at=now))
            else:
                unchanged.append(row["id"])
        self.flush_model()
        if unchanged:
            self.env.cr.execute("UPDATE fusion_billing_reconciliation SET run_count = run_count + 1, "
                                "last_run_at = %s, write_date = %s, write_uid = %s WHERE id = ANY(%s)",
                                [now, now, self.env.uid, unchanged])
        self._fc_update_quietly(quiet, now)
        self._fc_insert(service, period_start, new, now)
        self.invalidate_model()

    @api.model
    def _fc_update_quietly(self, rows, now):
        """Rows whose amounts, status and reason did not change (only e.g. the wording): updated in bulk."""
        names = list(ROW_FIELDS)
        template = "(%s::int4, %s::timestamp, %s::int4, " + ", ".join(f"%s::{ROW_FIELDS[n]}" for n in names) + ")"
        for start in range(0, len(rows), INSERT_BATCH):
            execute_values(self.env.cr, f"""
                UPDATE fusion_billing_reconciliation AS r
                   SET {", ".join(f"{name} = v.{name}" for name in names)}, run_count = r.run_count + 1,
                       last_run_at = v.now, write_date = v.now, write_uid = v.uid
                  FROM (VALUES %s) AS v(id, now, uid, {", ".join(names)})
                 WHERE r.id = v.id""", [
                (row_id, now, self.env.uid) + tuple(None if values[name] is False else values[name] for name in names)
                for row_id, values in rows[start:start + INSERT_BATCH]],
                template=template, page_size=INSERT_BATCH)

    @api.model
    def _fc_insert(self, service, period_start, new, now):
        """New rows in bulk (no chatter message at creation); a row another run inserted meanwhile is kept."""
        columns = ("service_id", "company_id", "period_start", "external_subscription_id", "abs_delta", "run_count",
                   "last_run_at", "create_uid", "create_date", "write_uid", "write_date") + tuple(ROW_FIELDS)
        for start in range(0, len(new), INSERT_BATCH):
            execute_values(self.env.cr, f"""
                INSERT INTO fusion_billing_reconciliation ({", ".join(columns)}) VALUES %s
                ON CONFLICT (service_id, period_start, external_subscription_id) DO NOTHING""", [
                (service.id, service.company_id.id, period_start, key, abs(values["delta"]), 1, now, self.env.uid,
                 now, self.env.uid, now) + tuple(None if values[name] is False else values[name] for name in ROW_FIELDS)
                for key, values in new[start:start + INSERT_BATCH]], page_size=INSERT_BATCH)

    @api.model
    def _run_note(self, service, period_start, period_end, summary):
        """The run's figures, kept in the service's chatter: progress from run to run."""
        counts = summary["counts"]
        figures = "; ".join(
            f"{reconcile.REASONS[reason][0]}: {values['count']} ({values['amount']:.2f} {currency})"
            for (reason, currency), values in sorted(summary["reasons"].items(), key=lambda item: -item[1]["count"]))
        return self.env._(
            "Reconciliation run for %(start)s – %(end)s: %(match)s match, %(mismatch)s mismatch, "
            "%(missing_odoo)s missing in Odoo, %(missing_app)s missing in the app, %(error)s not reconciled; "
            "absolute delta %(delta)s %(currency)s.%(figures)s",
            start=period_start, end=period_end - timedelta(days=1), match=counts.get("match", 0),
            mismatch=counts.get("mismatch", 0), missing_odoo=counts.get("missing_in_odoo", 0),
            missing_app=counts.get("missing_in_app", 0), error=counts.get("error", 0),
            delta=summary["total_abs_delta"], currency=service.currency_id.name,
            figures=f" By reason: {figures}." if figures else "")

    @api.model
    def _fc_last_import_at(self, service):
        """When the app's data was last imported, or None: the newest subscription an import created
        (they carry the app's status). A re-import that creates nothing does not move it."""
        self.env.cr.execute("""SELECT max(create_date) FROM sale_order
                                WHERE x_fc_service_id = %s AND x_fc_source_status IS NOT NULL""", [service.id])
        return self.env.cr.fetchone()[0]

    @api.model
    def _odoo_bills(self, service, period_start, period_end):
        """Shadow bills of the service's subscriptions in the period: what each would bill had it been
        live since its start, on its own billing periods (``sale.order._fc_renewals``): the plan's base
        fee at each renewal and the rated usage of those periods, with their taxes.

        Read in bulk; taxes are computed once per product, fiscal position and amount. A
        subscription whose bill cannot be computed becomes an error bill (its row says why), the
        others go on. Returns ``(bills, {external id: {"id", "partner_id", "link_id"}})``.
        """
        Order = self.env["sale.order"]
        rows = Order.search_read([
            ("x_fc_service_id", "=", service.id), ("is_subscription", "=", True), ("state", "!=", "cancel"),
            ("x_fc_external_id", "!=", False),
            "|", ("x_fc_terminated_at", "=", False), ("x_fc_terminated_at", ">=", period_start)],
            ["x_fc_external_id", "plan_id", "x_fc_terminated_at", "currency_id", "partner_id", "x_fc_account_link_id",
             "x_fc_source_status", "fiscal_position_id", "company_id"],
            order="id", load=None)
        plans = {plan.id: plan for plan in self.env["sale.subscription.plan"].browse({r["plan_id"] for r in rows})}
        with_charges = {plan_id for plan_id, plan in plans.items() if plan.x_fc_charge_ids.filtered("active")}
        link_keys = dict(self.env["fusion.billing.account.link"].with_context(active_test=False).browse(
            {r["x_fc_account_link_id"] for r in rows if r["x_fc_account_link_id"]}).mapped(
            lambda link: (link.id, link.external_id)))
        currencies = {c.id: c for c in self.env["res.currency"].browse({r["currency_id"] for r in rows})}
        taxes = _TaxCache(Order)
        bills, orders = {}, {}
        records = Order.browse([r["id"] for r in rows])  # prefetched together
        by_id = {order.id: order for order in records}
        # The usage of every subscription's renewal periods, read at once (not one query each).
        renewals = {}
        for row in rows:
            try:
                renewals[row["id"]] = by_id[row["id"]]._fc_renewals(period_start, period_end)
            except psycopg2.Error:
                raise
            except Exception:  # noqa: BLE001 — reported by _fc_order_bill below, with the others
                continue
        live = self.env["fusion.billing.usage"]._fc_live_totals_many(
            [(row["id"], start) for row in rows if row["plan_id"] in with_charges for start in renewals.get(row["id"], ())])
        for row in rows:
            key = row["x_fc_external_id"]
            plan = plans[row["plan_id"]]
            link = row["x_fc_account_link_id"]
            partner_key = link_keys.get(link) or row["partner_id"]
            currency = currencies[row["currency_id"]]
            try:
                bill = self._fc_order_bill(row, by_id[row["id"]], plan, plan.id in with_charges, partner_key,
                                           currency, taxes, period_start, period_end, live=live)
            except psycopg2.Error:
                raise
            except Exception as error:  # noqa: BLE001 — one malformed subscription never stops the others
                _logger.warning("Reconciliation of %s: the bill of subscription %s cannot be computed: %s",
                                service.name, key, error)
                bill = reconcile.error_bill(partner_key, currency.name, error)
            bills[key] = reconcile.merge(bills[key], bill) if key in bills else bill
            if key not in orders or not row["x_fc_terminated_at"]:  # the live order of that id, if any
                orders[key] = {"id": row["id"], "partner_id": row["partner_id"], "link_id": link}
        return bills, orders

    @api.model
    def _fc_order_bill(self, row, order, plan, with_usage, partner_key, currency, taxes, period_start, period_end,
                       live=None):
        """One subscription's shadow bill, from the order's own billing periods: its plan's base fee
        (``plan._fc_base_fee()``) at each of its renewals in the period (``order._fc_renewals``), and,
        when its plan has usage charges (``with_usage``), the rated usage of those periods
        (``order._fc_rated_usage``; usage is recorded on the same grid, ``order._fc_period``).
        ``live``: the usage totals read in bulk (``fusion.billing.usage._fc_live_totals_many``)."""
        renewals = order._fc_renewals(period_start, period_end)
        unit_price = plan._fc_base_fee()
        base = unit_price * len(renewals)
        tax = taxes.get(row, plan.x_fc_product_id, base) if base and plan.x_fc_product_id else 0.0
        usage = defaultdict(Decimal)
        for start in renewals if with_usage else ():
            totals = live.get((order.id, start), {}) if live is not None else None
            for charge, _usage, rating in order._fc_rated_usage(start, live=totals):
                usage[charge.metric_id.code] += rating.amount
                tax += taxes.get(row, charge._fc_product(), rating.amount) if rating.amount else 0.0
        return reconcile.Bill(
            partner_key=partner_key, currency=currency.name, plan_code=plan.x_fc_plan_code, base_fee=base,
            usage=dict(usage), tax=money.round_money(tax, currency.decimal_places), renewals=renewals,
            unit_price=unit_price, status=row["x_fc_source_status"] or None, since=order._fc_first_billed_day(),
            linked=bool(row["x_fc_account_link_id"]))

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
            tax=money.from_minor_units(reported["tax_cents"], decimals) if reported.get("tax_cents") is not None else None,
            renewals=derived.renewals if derived and base is None else None,
            unit_price=derived.unit_price if derived and base is None else None,
            status=derived.status if derived else None, since=derived.since if derived else None,
            canceled_at=derived.canceled_at if derived else None, period_end=derived.period_end if derived else None,
            skipped=derived.skipped if derived else None)

    @api.model
    def _api_report(self, service, bills):
        """Store amounts an app reports it billed (``POST /reconciliation/app_bills``): ``bills`` as
        ``core.lago.validate_app_bills`` returns them (the one validation of a report: ids, ISO
        dates, integer minor units within bounds), one row per subscription and period."""
        for bill in bills:
            period_start = fields.Date.to_date(bill["period_start"])
            row = self.search([("service_id", "=", service.id), ("period_start", "=", period_start),
                               ("external_subscription_id", "=", bill["external_subscription_id"])])
            if row:
                row.app_reported = dict(bill)
            else:
                self.create({"service_id": service.id, "period_start": period_start,
                             "period_end": fields.Date.to_date(bill["period_end"]),
                             "external_subscription_id": bill["external_subscription_id"],
                             "currency_id": service.currency_id.id, "state": "missing_in_odoo", "app_reported": dict(bill),
                             "run_count": 0,
                             "explanation": "reported by the app; not reconciled yet"})
        return len(bills)

    @api.model
    def _cron_reconcile_shadow_services(self):
        """Reconcile the last closed calendar month of every service still in shadow mode.

        Each service on its own: its run is committed before the next one starts, and a service
        whose run fails (unreachable source, malformed data) is rolled back alone, recorded as a
        failed run (*Reconciliation → Needs attention*) and noted on the service. After
        ``CRON_ATTEMPTS`` failures for one period the job stops retrying it; *Reconcile Last Month*
        (or a new period) tries again.
        """
        first = fields.Date.context_today(self).replace(day=1)
        previous = periods.add_period(first, "month", 1, -1)
        Run = self.env["fusion.billing.reconciliation.run"]
        for service in self.env["fusion.billing.service"].search([("billing_mode", "=", "shadow")], order="id"):
            if Run._fc_failures_since_success(service, previous) >= CRON_ATTEMPTS:
                _logger.warning("Reconciliation of %s for %s: failed %s times, left to a person (Reconcile Last Month)",
                                service.name, previous, CRON_ATTEMPTS)
                continue
            try:
                with self.env.cr.savepoint():
                    self._run(service, previous, first, service._fc_source_bills(previous, first))
            except Exception as error:  # noqa: BLE001 — one service's failure never stops another's
                _logger.warning("Reconciliation of %s for %s failed: %s", service.name, previous, error)
                self.env.invalidate_all()
                Run._fc_record_failure(service, previous, first, error)
            batch_jobs.commit(self.env)  # each service's run (or failure) kept on its own


class _TaxCache:
    """Tax of an amount on a product, as the invoice line computes it, once per product, fiscal
    position, currency, company and amount (tax amounts are shown, they never decide a match)."""

    def __init__(self, orders):
        self.orders = orders
        self.cache = {}

    def get(self, row, product, amount):
        key = (product.id, row["fiscal_position_id"], row["currency_id"], row["company_id"], amount)
        if key not in self.cache:
            self.cache[key] = self.orders.browse(row["id"])._fc_taxes(product, amount)
        return self.cache[key]


def _changed(row, values):
    """Whether any of ``values`` differs from the row as read (``search_read(load=None)``)."""
    for name, value in values.items():
        current = row.get(name)
        if isinstance(value, float) or isinstance(current, float):
            if round(float(current or 0.0) - float(value or 0.0), 6):
                return True
        elif (current or False) != (value or False):
            return True
    return False
