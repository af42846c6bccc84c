"""Dual-run reconciliation: what the app billed vs what Odoo computed in shadow, per subscription.

Each side is a dict ``{subscription_key: Bill}``. A row is produced for every subscription
present on either side, with a status and, where it can be derived, a plain-English
explanation (plan, base fee, usage per metric, tax, currency).
"""
from dataclasses import dataclass, field
from decimal import Decimal

ZERO = Decimal(0)
DEFAULT_TOLERANCE = Decimal("0.01")


@dataclass
class Bill:
    """One side's bill for a subscription and period (amounts in major units, before tax)."""
    partner_key: object
    currency: str
    plan_code: str = None
    base_fee: Decimal = ZERO
    usage: dict = field(default_factory=dict)   # metric code → amount
    tax: Decimal = None                         # None: unknown on that side

    @property
    def amount(self):
        return self.base_fee + sum(self.usage.values(), ZERO)


def _money(value):
    return f"{value:.2f}"


def explain(odoo, app, tolerance=DEFAULT_TOLERANCE):
    """Reasons two bills of one subscription differ, most structural first."""
    reasons = []
    if odoo.currency != app.currency:
        reasons.append(f"currency differs: Odoo {odoo.currency}, app {app.currency}")
    if (odoo.plan_code or app.plan_code) and odoo.plan_code != app.plan_code:
        reasons.append(f"plan differs: Odoo {odoo.plan_code}, app {app.plan_code}")
    if abs(odoo.base_fee - app.base_fee) > tolerance:
        reasons.append(f"base fee differs: Odoo {_money(odoo.base_fee)}, app {_money(app.base_fee)}")
    for metric in sorted(set(odoo.usage) | set(app.usage)):
        ours, theirs = odoo.usage.get(metric, ZERO), app.usage.get(metric, ZERO)
        if abs(ours - theirs) > tolerance:
            reasons.append(f"usage {metric} differs: Odoo {_money(ours)}, app {_money(theirs)}")
    if odoo.tax is not None and app.tax is not None and abs(odoo.tax - app.tax) > tolerance:
        reasons.append(f"tax differs: Odoo {_money(odoo.tax)}, app {_money(app.tax)}")
    return "; ".join(reasons)


def reconcile(odoo_bills, app_bills, tolerance=DEFAULT_TOLERANCE):
    """Rows ``{partner_key, subscription_key, odoo_amount, odoo_amount_incl_tax, app_amount, delta,
    status, explanation}``; ``delta`` = Odoo − app; ``match`` when |delta| ≤ tolerance and the
    currency and plan agree."""
    tolerance = Decimal(str(tolerance))
    rows = []
    for key in sorted(set(odoo_bills) | set(app_bills), key=str):
        odoo, app = odoo_bills.get(key), app_bills.get(key)
        odoo_amount = odoo.amount if odoo else ZERO
        app_amount = app.amount if app else ZERO
        if not app:
            status, explanation = "missing_in_app", "billed by Odoo only: the app has no bill for this subscription"
        elif not odoo:
            status, explanation = "missing_in_odoo", "billed by the app only: Odoo has no subscription or bill"
        else:
            explanation = explain(odoo, app, tolerance)
            same = (abs(odoo_amount - app_amount) <= tolerance and odoo.currency == app.currency
                    and (odoo.plan_code or None) == (app.plan_code or None))
            status = "match" if same else "mismatch"
            if status == "mismatch" and not explanation:
                explanation = f"amounts differ by {_money(odoo_amount - app_amount)}"
        rows.append({
            "partner_key": (odoo or app).partner_key,
            "subscription_key": key,
            "currency": (odoo or app).currency,
            "odoo_amount": odoo_amount,
            "odoo_amount_incl_tax": odoo_amount + (odoo.tax or ZERO) if odoo else ZERO,
            "app_amount": app_amount,
            "delta": odoo_amount - app_amount,
            "status": status,
            "explanation": explanation,
        })
    return rows


def summarise(rows):
    """Counts per status and totals (absolute delta, both sides)."""
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return {
        "counts": counts,
        "total_abs_delta": sum((abs(r["delta"]) for r in rows), ZERO),
        "total_odoo": sum((r["odoo_amount"] for r in rows), ZERO),
        "total_app": sum((r["app_amount"] for r in rows), ZERO),
    }


def nexacloud_bills(plans, subscriptions, period_start, period_end):
    """App-side bills derived from NexaCloud's own tables: the plan price of each subscription
    active in ``[period_start, period_end)``.

    Monthly plans bill their price every period; yearly plans only in the period where their
    current term starts. Canceled subscriptions count while they were active in the period.
    Keys are the source subscription ids (as strings); partners are the source user ids.
    """
    plans_by_id = {plan["id"]: plan for plan in plans}
    bills = {}
    for sub in subscriptions:
        plan = plans_by_id.get(sub["plan_id"])
        if not plan or sub["status"] == "incomplete_expired" or _date(sub["created_at"]) >= period_end:
            continue
        ended = _date(sub.get("canceled_at"))
        if sub["status"] == "canceled" and (ended is None or ended < period_start):
            continue
        term_start = _date(sub.get("current_period_start"))
        if plan["interval"] == "year" and not (term_start and period_start <= term_start < period_end):
            base = ZERO
        else:
            base = Decimal(plan["price_cents"]) / 100
        bills[str(sub["id"])] = Bill(partner_key=str(sub["user_id"]), currency=plan["currency"].strip().upper(),
                                     plan_code=plan["code"], base_fee=base)
    return bills


def _date(value):
    return value.date() if hasattr(value, "date") and callable(value.date) else value
