"""Dual-run reconciliation: what the app billed vs what Odoo computed in shadow, per subscription.

Each side is a dict ``{subscription_key: Bill}``. :func:`reconcile` gives a row for every
subscription present on either side with a status, ONE reason code for a row that does not
match (:data:`REASONS`: a *timing* difference or a *real* one) and a plain-language explanation.

How the app (Stripe) bills, as :func:`stripe_renewals` derives it from NexaCloud's tables
-------------------------------------------------------------------------------------------
Stripe bills a subscription in advance at each *renewal*: the start of each billing period.
From one snapshot of a subscription the renewals are ``current_period_start``,
``current_period_end`` (the next renewal) and the dates a whole interval (month, year) before
them, back to the subscription's creation (``created_at``). Intervals are counted back from
``current_period_end``, which keeps the anchor day Stripe clamps (Jan 31 → Feb 28 → Mar 31);
when the current period is not a whole interval (e.g. it followed a trial) both ends count.
``cancel_at_period_end`` ends the subscription at ``current_period_end`` instead of renewing.

A subscription bills the plan price once for every renewal inside the reconciled period
``[period_start, period_end)``, monthly and yearly plans alike; nothing at or after
``canceled_at``; nothing while ``incomplete``/``incomplete_expired`` (its first payment never went
through: Stripe collects nothing). A ``trialing`` subscription is charged first when its trial
ends, at ``current_period_end``: that is its only renewal (never its start, nor an interval before).
Examples (monthly plan, period = November 2026):

* created 2026-01-03, current period 2026-11-03 → 2026-12-03: one renewal (Nov 3);
* created 2026-01-25, current period 2026-10-25 → 2026-11-25: one renewal (Nov 25, the next one);
* the same, canceled 2026-11-20: nothing (canceled before its renewal); canceled 2026-11-26: Nov 25;
* yearly, current period 2025-11-25 → 2026-11-25: one renewal (Nov 25); 2026-03-03 → 2027-03-03: none;
* in trial from 2026-11-02 to 2026-11-16: one renewal (Nov 16, its first charge); to 2026-12-02: none.

Odoo's side (:func:`odoo_renewals`) renews on the subscription's billing grid, the one through its
*Date of Next Invoice* where the native recurring engine invoices it, from its first billed day (its
start date, or the end of its trial) until its end date or termination.

Reasons (:data:`REASONS`) are *timing* (both sides bill the same thing at different moments, or
Odoo's copy is older than the app's data: they resolve themselves) or *real* (after the cutover
the customer would be billed differently). A pair of zero bills, or a zero bill against none,
is a match.
"""
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal

from . import nexacloud, periods

ZERO = Decimal(0)
DEFAULT_TOLERANCE = Decimal("0.01")
TIMING, REAL = "timing", "real"

# Stripe statuses that collect nothing (subscriptions whose first payment never went through).
NOT_BILLING_STATUSES = nexacloud.NOT_STARTED_STATUSES

# reason code → (label shown in lists and totals, kind). Timing: the two sides bill the same
# thing at different moments (or Odoo's copy is older than the app's data); real: after the
# cutover a customer would be billed differently.
REASONS = {
    "user_deleted": ("Not imported: user deleted in the app, Stripe still bills", REAL),
    "canceled_before_import": ("Not imported: canceled before the import", TIMING),
    "not_imported": ("Not imported: the import left it out", REAL),
    "new_since_import": ("Not imported yet: created after the last import", TIMING),
    "canceled_after_import": ("Canceled in the app after the import", TIMING),
    "renewal_timing": ("Renewal timing", TIMING),
    "trial": ("In trial in the app", TIMING),
    "not_started": ("Never started in the app (incomplete)", REAL),
    "currency": ("Foreign currency", REAL),
    "plan_differs": ("Plan differs", REAL),
    "price_differs": ("Plan price differs", REAL),
    "usage_differs": ("Usage differs", REAL),
    "no_account_link": ("No account link", REAL),
    "missing_in_app": ("Billed by Odoo only", REAL),
    "missing_in_odoo": ("Billed by the app only", REAL),
    "amount_differs": ("Amounts differ", REAL),
    "error": ("Could not be reconciled", REAL),
}


@dataclass
class Bill:
    """One side's bill for a subscription and period (amounts in major units, before tax).

    The optional facts let :func:`reconcile` name the cause of a difference:
    ``renewals`` (dates billed in the period; None: unknown), ``unit_price`` (base fee of one
    renewal), ``status`` (the app's status: Stripe's; on Odoo's side the one copied at import),
    ``since`` (app: creation date; Odoo: start date, its first renewal), ``canceled_at`` (app),
    ``period_end`` (app: end of its current period, e.g. the end of a trial), ``skipped``
    (app: ``(code, reason)`` when the importer leaves it out: :func:`core.nexacloud.plan_subscription`),
    ``linked`` (Odoo: the subscription has an account link), ``error`` (this side could not be
    computed: why).
    """
    partner_key: object
    currency: str
    plan_code: str = None
    base_fee: Decimal = ZERO
    usage: dict = field(default_factory=dict)   # metric code → amount
    tax: Decimal = None                         # None: unknown on that side
    renewals: tuple = None
    unit_price: Decimal = None
    status: str = None
    since: date = None
    canceled_at: object = None
    period_end: date = None
    skipped: tuple = None
    linked: bool = True
    error: str = None

    @property
    def amount(self):
        return self.base_fee + sum(self.usage.values(), ZERO)


def error_bill(partner_key, currency, error):
    """A side that could not be computed (malformed data): reconciled as an ``error`` row."""
    return Bill(partner_key=partner_key, currency=currency, error=" ".join(str(error).split())[:300] or "error")


def merge(first, second):
    """Two bills of one subscription key on one side (e.g. a terminated order and its successor)."""
    usage = dict(first.usage)
    for code, amount in second.usage.items():
        usage[code] = usage.get(code, ZERO) + amount
    renewals = None if first.renewals is None or second.renewals is None else \
        tuple(sorted(set(first.renewals) | set(second.renewals)))
    tax = None if first.tax is None and second.tax is None else (first.tax or ZERO) + (second.tax or ZERO)
    return replace(second, base_fee=first.base_fee + second.base_fee, usage=usage, renewals=renewals, tax=tax,
                   since=min(filter(None, (first.since, second.since)), default=None),
                   error=first.error or second.error)


# ---------------------------------------------------------------------------- renewals
def _day(value):
    return value.date() if isinstance(value, datetime) else value


def _shift(moment, unit, value, count):
    """``moment`` (date or datetime) moved by ``count`` whole intervals, clamped to the month's end."""
    day = periods.add_period(_day(moment), unit, value, count)
    return datetime.combine(day, moment.timetz()) if isinstance(moment, datetime) else day


def _before(moment, limit):
    """``moment`` strictly before ``limit``: to the second when both are datetimes, else by day."""
    if isinstance(moment, datetime) and isinstance(limit, datetime):
        return moment < limit
    return _day(moment) < _day(limit)


def stripe_renewals(period_start, period_end, interval, created_at=None, current_period_start=None,
                    current_period_end=None, canceled_at=None, cancel_at_period_end=False, status="active"):
    """Renewal moments of one Stripe subscription inside ``[period_start, period_end)`` (sorted).

    ``interval``: ``(unit, value)`` of the plan, e.g. ``("month", 1)``; None when unknown
    (only ``current_period_start``/``current_period_end`` themselves are then known renewals).
    The rule is in this module's docstring. Whole intervals are counted back from
    ``current_period_end`` when ``current_period_start`` is one of them, which keeps the
    anchor day Stripe clamps (Jan 31 → Feb 28 → Mar 31).
    """
    status = (status or "").strip().lower()
    if status in NOT_BILLING_STATUSES:
        return ()
    if status == "trialing":  # charged first when the trial ends (unless it cancels then)
        if current_period_end is None or cancel_at_period_end:
            return ()
        return tuple(moment for moment in (current_period_end,) if period_start <= _day(moment) < period_end
                     and (canceled_at is None or _before(moment, canceled_at)))
    start = current_period_start or created_at
    if start is None and current_period_end is None:
        return ()

    def series(anchor, floor):
        """``anchor`` and the whole intervals before it, down to the period and to ``floor``."""
        found, count = [], 0
        while True:
            moment = _shift(anchor, *interval, -count) if interval else anchor
            if _day(moment) < period_start or (floor is not None and _day(moment) < _day(floor)):
                return found
            found.append(moment)
            if not interval:
                return found
            count += 1

    renewals = set()
    if current_period_end is not None:
        from_end = series(current_period_end, created_at)
        if start is None or _day(start) < period_start or _day(start) in {_day(m) for m in from_end}:
            renewals.update(from_end)
        else:  # the current period is not a whole interval (e.g. it followed a trial)
            renewals.update(series(current_period_end, start))
            renewals.update(series(start, created_at))
        if cancel_at_period_end:
            renewals.discard(current_period_end)  # it ends there instead of renewing
    else:
        renewals.update(series(start, created_at))
    return tuple(sorted(moment for moment in renewals if _day(moment) < period_end
                        and (canceled_at is None or _before(moment, canceled_at))))


def odoo_renewals(anchor, unit, value, period_start, period_end, until=None, since=None):
    """Start dates of Odoo's billing periods inside the period, as the recurring engine bills them in
    advance: the grid of ``anchor`` (the subscription's grid through its Date of Next Invoice, at or
    before its start), from ``since`` (its first billed day: its start, or the end of its trial;
    default ``anchor``), before ``until`` (its end date or termination)."""
    since = anchor if since is None else since
    return tuple(start for start, _end in periods.periods_between(anchor, unit, value, period_start, period_end)
                 if start >= period_start and start >= since and (until is None or _before(start, until)))


# ---------------------------------------------------------------------------- NexaCloud
def nexacloud_bills(plans, subscriptions, period_start, period_end, users=None, service_currency="CAD"):
    """App-side bills derived from NexaCloud's own tables, as Stripe bills (:func:`stripe_renewals`).

    A bill for every subscription that existed during ``[period_start, period_end)`` (zero when
    no renewal falls in it), except those canceled before the period and ``incomplete_expired``
    ones. With ``users``, each bill also says why the importer would leave it out (its
    planner's decision). Keys are source subscription ids, partners source user ids (strings).
    """
    plans_by_id = {plan["id"]: plan for plan in plans}
    plan_state, plan_reason = {}, {}
    for plan in plans:
        decision = nexacloud.plan_plan(plan, service_currency)
        plan_state[plan["id"]], plan_reason[plan["id"]] = decision.action, decision.reason
    user_state, user_reason = {}, {}
    for user in users or ():
        decision = nexacloud.plan_user(user)
        user_state[str(user["id"])], user_reason[str(user["id"])] = decision.action, decision.reason
    bills = {}
    for sub in subscriptions:
        status = (sub.get("status") or "").strip().lower()
        created, canceled = sub.get("created_at"), sub.get("canceled_at")
        if status == "incomplete_expired" or (created is not None and _day(created) >= period_end):
            continue
        if status == "canceled" and _day(canceled or sub.get("current_period_end") or created or period_start) \
                < period_start:
            continue
        plan = plans_by_id.get(sub["plan_id"])
        if plan is None:
            bills[str(sub["id"])] = error_bill(str(sub["user_id"]), service_currency,
                                               f"its plan {sub['plan_id']} is not in NexaCloud")
            continue
        unit = nexacloud.INTERVALS.get((plan.get("interval") or "").strip().lower())
        price = Decimal(plan["price_cents"]) / 100
        renewals = stripe_renewals(
            period_start, period_end, (unit, 1) if unit else None, created_at=created,
            current_period_start=sub.get("current_period_start"), current_period_end=sub.get("current_period_end"),
            canceled_at=canceled if canceled is not None or status != "canceled" else sub.get("current_period_end"),
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")), status=status)
        skipped = None
        if users is not None:
            decision = nexacloud.plan_subscription(sub, user_state, plan_state)
            if decision.action != nexacloud.IMPORT:
                reason = decision.reason
                if decision.code == "parent_failed":
                    parent = user_reason.get(str(sub["user_id"])) if user_state.get(str(sub["user_id"])) == \
                        nexacloud.FAIL else plan_reason.get(sub["plan_id"])
                    reason = f"{reason} ({parent})"
                skipped = (decision.code or decision.action, reason)
        bills[str(sub["id"])] = Bill(
            partner_key=str(sub["user_id"]), currency=(plan["currency"] or "").strip().upper(),
            plan_code=plan["code"], base_fee=price * len(renewals), renewals=tuple(_day(r) for r in renewals),
            unit_price=price, status=status, since=_day(created) if created is not None else None,
            canceled_at=canceled, period_end=_day(sub.get("current_period_end")), skipped=skipped)
    return bills


# ---------------------------------------------------------------------------- comparison
def _money(value):
    return f"{value:.2f}"


def _dates(values):
    return ", ".join(str(value) for value in values) or "none"


def _plans_differ(odoo, app):
    """Both sides name their plan, and not the same one (an app that does not say is not compared)."""
    return bool(odoo.plan_code and app.plan_code and odoo.plan_code != app.plan_code)


def explain(odoo, app, tolerance=DEFAULT_TOLERANCE):
    """Every way two bills of one subscription differ, most structural first."""
    reasons = []
    if odoo.currency != app.currency:
        reasons.append(f"currency differs: Odoo {odoo.currency}, app {app.currency}")
    if _plans_differ(odoo, app):
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


def _missing_in_odoo(app, linked, imported_at):
    """(reason, sentence) of an app bill Odoo has no subscription for."""
    billed = f"the app bills {_money(app.amount)} {app.currency}"
    if app.renewals:
        billed += f" (renewal of {_dates(app.renewals)})"
    code, why = app.skipped or (None, None)
    if code == "user_deleted":
        return "user_deleted", (f"Not imported: {why}, but Stripe still bills this {app.status} subscription: "
                                f"{billed}; Odoo will never bill it.")
    if code == "canceled":
        when = f" on {_day(app.canceled_at)}" if app.canceled_at else ""
        return "canceled_before_import", (f"Not imported: canceled in the app{when}, before the import; {billed} "
                                          "before the cancellation.")
    if code:
        return "not_imported", f"Not imported: {why}; {billed}."
    if app.status is not None and imported_at is not None and app.since is not None and app.since >= _day(imported_at):
        return "new_since_import", (f"Not imported yet: created in the app on {app.since}, after the last import "
                                    f"({_day(imported_at)}); {billed}. Run the import again.")
    if linked is not None and app.partner_key is not None and str(app.partner_key) not in linked:
        return "no_account_link", (f"No account link: the app's customer {app.partner_key} is unknown to Odoo; "
                                   f"{billed}.")
    if app.status is not None:
        return "not_imported", (f"Not imported: the import did not create it (see its reported rows); {billed}.")
    return "missing_in_odoo", f"Billed by the app only: Odoo has no subscription or bill; {billed}."


def _mismatch(odoo, app, tolerance):
    """(reason, sentence) of two bills of one subscription that differ."""
    if odoo.currency != app.currency:
        return "currency", (f"Foreign currency: Odoo bills in {odoo.currency}, the app in {app.currency}; the amounts "
                            "cannot be compared.")
    if _plans_differ(odoo, app):
        return "plan_differs", f"Plan differs: Odoo bills plan {odoo.plan_code}, the app {app.plan_code}."
    status = app.status or ""
    if status == "trialing" and set(odoo.renewals or ()) != set(app.renewals or ()):
        ends = f" until {app.period_end}" if app.period_end else ""
        return "trial", (f"In trial in the app{ends}: Stripe bills nothing before the trial ends, Odoo's copy renews "
                         f"on {_dates(odoo.renewals or ())} (it does not know the trial).")
    if status in ("incomplete", "incomplete_expired") and not app.renewals:
        return "not_started", (f"Never started in the app ({status}: its first payment did not go through), so "
                               f"Stripe bills nothing; Odoo's copy bills {_money(odoo.amount)} {odoo.currency}.")
    if status == "canceled" and app.canceled_at is not None and odoo.status != "canceled" and any(
            not _before(renewal, _day(app.canceled_at)) for renewal in odoo.renewals or ()):
        return "canceled_after_import", (
            f"Canceled in the app on {_day(app.canceled_at)}, after the import: Odoo's copy still renews on "
            f"{_dates(odoo.renewals)}. It stops when the subscription is terminated in Odoo.")
    if odoo.renewals is not None and app.renewals is not None and set(odoo.renewals) != set(app.renewals):
        text = f"Renewal timing: Odoo renews on {_dates(odoo.renewals)}, the app on {_dates(app.renewals)}"
        early = [renewal for renewal in app.renewals if odoo.since and renewal < odoo.since]
        if early:
            text += f" (Odoo's copy starts on {odoo.since}, after the app's renewal of {_dates(early)})"
        return "renewal_timing", text + "."
    if abs(odoo.base_fee - app.base_fee) > tolerance:
        odoo_price = odoo.unit_price if odoo.unit_price is not None else odoo.base_fee
        app_price = app.unit_price if app.unit_price is not None else app.base_fee
        return "price_differs", (f"Plan price differs: Odoo {_money(odoo_price)}, the app {_money(app_price)} "
                                 f"{app.currency} per renewal.")
    usage = [f"{metric}: Odoo {_money(odoo.usage.get(metric, ZERO))}, app {_money(app.usage.get(metric, ZERO))}"
             for metric in sorted(set(odoo.usage) | set(app.usage))
             if abs(odoo.usage.get(metric, ZERO) - app.usage.get(metric, ZERO)) > tolerance]
    if usage:
        return "usage_differs", "Usage differs, by charge: " + "; ".join(usage) + "."
    return "amount_differs", f"Amounts differ by {_money(odoo.amount - app.amount)} {odoo.currency}."


def classify(odoo, app, tolerance=DEFAULT_TOLERANCE, linked=None, imported_at=None):
    """``(status, reason code or None, explanation)`` of one subscription's two bills.

    A pair of zero bills, or a zero bill against none, is a match. ``linked``: the app customer
    keys Odoo has an account link for (None: unknown); ``imported_at``: when the app's data was
    last imported (None: unknown).
    """
    tolerance = Decimal(str(tolerance))
    broken = (odoo and odoo.error and f"Odoo's bill could not be computed: {odoo.error}") or \
        (app and app.error and f"The app's bill could not be read: {app.error}")
    if broken:
        return "error", "error", broken + "."
    odoo_amount, app_amount = (odoo.amount if odoo else ZERO), (app.amount if app else ZERO)
    if abs(odoo_amount) <= tolerance and abs(app_amount) <= tolerance:
        return "match", None, ""
    if odoo is None:
        return ("missing_in_odoo",) + _missing_in_odoo(app, linked, imported_at)
    if app is None:
        if not odoo.linked:
            return "missing_in_app", "no_account_link", (
                "No account link: Odoo bills a subscription that is linked to no account of the app.")
        return "missing_in_app", "missing_in_app", (
            f"Billed by Odoo only: the app has no bill for this subscription (Odoo bills {_money(odoo_amount)} "
            f"{odoo.currency}).")
    details = explain(odoo, app, tolerance)
    same = abs(odoo_amount - app_amount) <= tolerance and odoo.currency == app.currency and not _plans_differ(odoo, app)
    if same:
        return "match", None, details
    reason, sentence = _mismatch(odoo, app, tolerance)
    return "mismatch", reason, sentence + (f" Details: {details}." if details else "")


def reconcile(odoo_bills, app_bills, tolerance=DEFAULT_TOLERANCE, linked=None, imported_at=None):
    """Rows ``{partner_key, subscription_key, currency, odoo_amount, odoo_amount_incl_tax, app_amount,
    delta, status, reason, kind, explanation}``; ``delta`` = Odoo − app; ``reason`` (one of
    :data:`REASONS`) and ``kind`` (timing/real) are None on a match."""
    tolerance = Decimal(str(tolerance))
    rows = []
    for key in sorted(set(odoo_bills) | set(app_bills), key=str):
        odoo, app = odoo_bills.get(key), app_bills.get(key)
        status, reason, explanation = classify(odoo, app, tolerance, linked, imported_at)
        odoo_amount = odoo.amount if odoo and not odoo.error else ZERO
        app_amount = app.amount if app and not app.error else ZERO
        rows.append({
            "partner_key": (odoo or app).partner_key,
            "app_partner_key": app.partner_key if app else None,
            "subscription_key": key,
            "currency": (odoo or app).currency,
            "odoo_amount": odoo_amount,
            "odoo_amount_incl_tax": odoo_amount + (odoo.tax or ZERO) if odoo and not odoo.error else ZERO,
            "app_amount": app_amount,
            "delta": odoo_amount - app_amount,
            "status": status,
            "reason": reason,
            "kind": REASONS[reason][1] if reason else None,
            "explanation": explanation,
        })
    return rows


def summarise(rows):
    """Counts per status, figures per reason and totals (absolute delta, both sides).

    ``reasons``: ``{(reason, currency): {"count", "amount" (sum of |delta|), "delta"}}`` of the
    rows that do not match.
    """
    counts, reasons = {}, {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        if row["reason"]:
            figures = reasons.setdefault((row["reason"], row["currency"]), {"count": 0, "amount": ZERO, "delta": ZERO})
            figures["count"] += 1
            figures["amount"] += abs(row["delta"])
            figures["delta"] += row["delta"]
    return {
        "counts": counts,
        "reasons": reasons,
        "total_abs_delta": sum((abs(r["delta"]) for r in rows), ZERO),
        "total_odoo": sum((r["odoo_amount"] for r in rows), ZERO),
        "total_app": sum((r["app_amount"] for r in rows), ZERO),
    }
