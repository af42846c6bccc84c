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
