"""Billing periods anchored on a subscription's start date (anniversary billing, as Odoo does).

Periods are ``[start, end)`` date ranges. Month and year steps are always computed from
the anchor, clamped to the month's last day, so Jan 31 → Feb 28/29 → Mar 31 never drifts.
"""
import calendar
from datetime import date, datetime, timedelta

UNITS = ("day", "week", "month", "year")


def _as_date(value):
    return value.date() if isinstance(value, datetime) else value


def add_period(anchor, unit, value, count=1):
    """``anchor`` + ``count`` × (``value`` ``unit``s)."""
    steps = value * count
    if unit == "day":
        return anchor + timedelta(days=steps)
    if unit == "week":
        return anchor + timedelta(weeks=steps)
    if unit == "month":
        months = anchor.month - 1 + steps
    elif unit == "year":
        months = anchor.month - 1 + 12 * steps
    else:
        raise ValueError(f"unknown period unit {unit!r}")
    year, month = anchor.year + months // 12, months % 12 + 1
    return date(year, month, min(anchor.day, calendar.monthrange(year, month)[1]))


def period_bounds(anchor, unit, value, at):
    """The ``(start, end)`` period containing ``at`` (a date or datetime).

    ``at`` before the anchor belongs to the first period (usage sent just before the start
    date is billed with the first period rather than lost).
    """
    if value < 1:
        raise ValueError("a billing period lasts at least one unit")
    at = _as_date(at)
    if at < anchor:
        return anchor, add_period(anchor, unit, value)
    if unit in ("day", "week"):
        length = value * (7 if unit == "week" else 1)
        index = (at - anchor).days // length
    else:
        months = (at.year - anchor.year) * 12 + at.month - anchor.month
        index = max(months // (value * (12 if unit == "year" else 1)) - 1, 0)
        while add_period(anchor, unit, value, index + 1) <= at:
            index += 1
    return add_period(anchor, unit, value, index), add_period(anchor, unit, value, index + 1)


def on_grid(anchor, unit, value, day):
    """Whether a period of the grid anchored at ``anchor`` starts on ``day``."""
    anchor, day = _as_date(anchor), _as_date(day)
    return day >= anchor and period_bounds(anchor, unit, value, day)[0] == day


def grid_anchor(invoice_date, unit, value, floor, prefer=()):
    """The billing grid point at or before ``floor`` on the grid through ``invoice_date``.

    Odoo invoices a subscription on its *Date of Next Invoice* and moves that date one billing
    period on each time, so the periods are ``invoice_date`` ± whole periods. Usage periods
    follow that grid (they close on the day the invoice that bills them is due): this returns
    the grid point to anchor them on, at or before ``floor`` (the subscription's start), so
    ``period_bounds`` can place any later timestamp on the same grid.

    Month ends make that grid ambiguous: February 28 is on the grids of the 28th, 29th, 30th
    and 31st, and stepping back from it alone gives the 28th. The anchor must not move while
    the invoicing grid does not (usage is filed under its periods' start): a grid through
    ``invoice_date`` that runs through ``floor`` itself, or else through one of the ``prefer``
    dates (e.g. the last invoice date), is kept, so a subscription started on January 31 stays
    anchored there through February 28, March 31 and April 30.
    """
    invoice_date, floor = _as_date(invoice_date), _as_date(floor)
    if value < 1:
        raise ValueError("a billing period lasts at least one unit")
    for candidate in (floor, *prefer):
        if not candidate:
            continue
        anchor = floor if candidate == floor else grid_anchor(candidate, unit, value, floor)
        if on_grid(anchor, unit, value, invoice_date):
            return anchor
    count = 0
    if invoice_date > floor:
        # Jump close with an estimate (whole units between the two dates), then step exactly.
        days = {"day": 1, "week": 7, "month": 28, "year": 365}[unit] * value
        count = -((invoice_date - floor).days // days)
        while add_period(invoice_date, unit, value, count) > floor:
            count -= 1
        while add_period(invoice_date, unit, value, count + 1) <= floor:
            count += 1
    else:
        while add_period(invoice_date, unit, value, count + 1) <= floor:
            count += 1
    return add_period(invoice_date, unit, value, count)


def unused_fraction(start, end, at):
    """Share of the period ``[start, end)`` not yet used at ``at`` (a date or datetime), by days:
    what a prorated credit for the rest of a period paid in advance gives back."""
    start, end, at = _as_date(start), _as_date(end), _as_date(at)
    if end <= start:
        return 0, 1
    remaining = min(max((end - max(at, start)).days, 0), (end - start).days)
    return remaining, (end - start).days


def periods_between(anchor, unit, value, start, end):
    """Periods (start, end) that overlap ``[start, end)``, in order."""
    current, _ = period_bounds(anchor, unit, value, start)
    index = 0
    while add_period(anchor, unit, value, index) < current:
        index += 1
    end = _as_date(end)
    while True:
        period_start = add_period(anchor, unit, value, index)
        if period_start >= end:
            return
        yield period_start, add_period(anchor, unit, value, index + 1)
        index += 1
