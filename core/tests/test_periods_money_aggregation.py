from datetime import date, datetime
from decimal import Decimal

import pytest

from core import aggregation, money, periods

D = Decimal


@pytest.mark.parametrize("value, expected", [
    (1, D(1)), ("0.1", D("0.1")), (0.1, D("0.1")), (" 2.50 ", D("2.50")), (D("3"), D(3)),
])
def test_to_decimal(value, expected):
    assert money.to_decimal(value) == expected


@pytest.mark.parametrize("value", [None, True, "abc", "NaN", "inf", float("nan"), [1]])
def test_to_decimal_rejects(value):
    with pytest.raises(ValueError):
        money.to_decimal(value)


@pytest.mark.parametrize("amount, decimals, cents", [
    ("12.345", 2, 1235), ("12.344", 2, 1234), ("-0.005", 2, -1), ("7", 0, 7), ("1.2345", 3, 1235),
])
def test_minor_units(amount, decimals, cents):
    assert money.to_minor_units(amount, decimals) == cents
    assert money.from_minor_units(cents, decimals) == money.round_money(amount, decimals)


def test_month_periods_never_drift_from_the_anchor():
    anchor = date(2026, 1, 31)
    assert [periods.add_period(anchor, "month", 1, i) for i in range(4)] == [
        date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)]
    assert periods.add_period(date(2024, 2, 29), "year", 1) == date(2025, 2, 28)


@pytest.mark.parametrize("anchor, unit, value, at, expected", [
    (date(2026, 11, 1), "month", 1, date(2026, 11, 1), (date(2026, 11, 1), date(2026, 12, 1))),
    (date(2026, 11, 1), "month", 1, datetime(2026, 11, 30, 23, 59), (date(2026, 11, 1), date(2026, 12, 1))),
    (date(2026, 11, 1), "month", 1, date(2026, 12, 1), (date(2026, 12, 1), date(2027, 1, 1))),
    (date(2026, 1, 31), "month", 1, date(2026, 3, 30), (date(2026, 2, 28), date(2026, 3, 31))),
    (date(2026, 1, 15), "month", 3, date(2026, 7, 14), (date(2026, 4, 15), date(2026, 7, 15))),
    (date(2026, 3, 10), "year", 1, date(2028, 3, 9), (date(2027, 3, 10), date(2028, 3, 10))),
    (date(2026, 1, 1), "week", 2, date(2026, 1, 20), (date(2026, 1, 15), date(2026, 1, 29))),
    (date(2026, 11, 1), "month", 1, date(2026, 10, 20), (date(2026, 11, 1), date(2026, 12, 1))),
])
def test_period_bounds(anchor, unit, value, at, expected):
    assert periods.period_bounds(anchor, unit, value, at) == expected


@pytest.mark.parametrize("invoice_date, unit, value, floor, expected", [
    # the invoice date itself when it is the start
    (date(2026, 1, 1), "month", 1, date(2026, 1, 1), date(2026, 1, 1)),
    # next invoice in the future: stepped back onto the grid at or before the start
    (date(2026, 12, 1), "month", 1, date(2026, 3, 1), date(2026, 3, 1)),
    (date(2026, 12, 15), "month", 1, date(2026, 3, 1), date(2026, 2, 15)),  # Stripe's anchor, not the start
    (date(2026, 12, 15), "month", 3, date(2026, 3, 1), date(2025, 12, 15)),
    (date(2027, 3, 31), "month", 1, date(2027, 1, 31), date(2027, 1, 31)),  # month ends, clamped from the 31st
    (date(2030, 5, 10), "year", 1, date(2026, 7, 1), date(2026, 5, 10)),
    (date(2026, 2, 26), "week", 2, date(2026, 1, 1), date(2026, 1, 1)),
    # invoice date before the start (a draft dated earlier): stepped forward
    (date(2026, 1, 10), "month", 1, date(2026, 4, 20), date(2026, 4, 10)),
])
def test_grid_anchor_follows_the_next_invoice_date(invoice_date, unit, value, floor, expected):
    anchor = periods.grid_anchor(invoice_date, unit, value, floor)
    assert anchor == expected
    # the invoice date is on the anchor's grid: a period of the anchor starts on it
    assert invoice_date < anchor or periods.period_bounds(anchor, unit, value, invoice_date)[0] == invoice_date


@pytest.mark.parametrize("floor, invoice_dates, prefer_last, expected", [
    # started on January 31, invoiced on the month's last day (no drift): anchored there, always
    (date(2026, 1, 31), [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)], False,
     date(2026, 1, 31)),
    # a Stripe anchor on the 31st (start on the 15th): the last invoice date tells its day
    (date(2026, 1, 15), [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31), date(2026, 4, 30)], True,
     date(2025, 12, 31)),
    # a Stripe anchor on the 30th: April 30 is on the 31st's grid too, but March 30 said the 30th
    (date(2026, 1, 15), [date(2026, 1, 30), date(2026, 2, 28), date(2026, 3, 30), date(2026, 4, 30),
                         date(2026, 5, 30)], True, date(2025, 12, 30)),
])
def test_grid_anchor_stays_put_while_invoices_follow_one_grid(floor, invoice_dates, prefer_last, expected):
    """A month-end grid is ambiguous from one date alone: the anchor must not move from one
    invoice to the next (usage already filed under its periods would be left behind)."""
    anchors, last = [], None
    for invoice_date in invoice_dates:
        anchors.append(periods.grid_anchor(invoice_date, "month", 1, floor, prefer=(last,) if prefer_last else ()))
        last = invoice_date
    assert anchors == [expected] * len(invoice_dates)
    for invoice_date in invoice_dates:
        assert periods.on_grid(expected, "month", 1, invoice_date)


@pytest.mark.parametrize("start, end, at, expected", [
    (date(2026, 1, 1), date(2026, 2, 1), date(2026, 1, 16), (16, 31)),
    (date(2026, 1, 1), date(2026, 2, 1), datetime(2026, 1, 1, 9), (31, 31)),
    (date(2026, 1, 1), date(2026, 2, 1), date(2026, 2, 1), (0, 31)),
    (date(2026, 1, 1), date(2026, 2, 1), date(2025, 12, 1), (31, 31)),
])
def test_unused_fraction(start, end, at, expected):
    assert periods.unused_fraction(start, end, at) == expected


def test_periods_between_and_bad_units():
    assert list(periods.periods_between(date(2026, 1, 1), "month", 1, date(2026, 2, 15), date(2026, 4, 1))) == [
        (date(2026, 2, 1), date(2026, 3, 1)), (date(2026, 3, 1), date(2026, 4, 1))]
    with pytest.raises(ValueError):
        periods.add_period(date(2026, 1, 1), "fortnight", 1)
    with pytest.raises(ValueError):
        periods.period_bounds(date(2026, 1, 1), "month", 0, date(2026, 1, 1))


def _events(*values, field="gb"):
    return [{"transaction_id": f"t{i}", "timestamp": i, "properties": {field: v}} for i, v in enumerate(values)]


@pytest.mark.parametrize("kind, expected", [
    ("count", 4), ("sum", D("16.5")), ("max", 10), ("latest", D("0.5")), ("unique_count", 4),
])
def test_aggregations(kind, expected):
    result = aggregation.aggregate(kind, _events(1, 10, 5, "0.5"), "gb")
    assert result.units == D(str(expected))
    assert result.events_count == 4
    if kind == "unique_count":
        assert aggregation.aggregate(kind, _events("a", "b", "a"), "gb").units == 2


def test_latest_breaks_timestamp_ties_by_arrival():
    events = [{"timestamp": 5, "properties": {"v": 1}}, {"timestamp": 5, "properties": {"v": 2}},
              {"timestamp": 4, "properties": {"v": 9}}]
    assert aggregation.aggregate("latest", events, "v").units == 2


@pytest.mark.parametrize("kind", ["sum", "max", "latest"])
def test_aggregate_push_equals_event_stream(kind):
    """An app pushing one period counter gets the same units as one event per occurrence."""
    stream = _events(3, 4, 5)
    expected = aggregation.aggregate(kind, stream, "gb").units
    push = _events(expected)
    assert aggregation.aggregate(kind, push, "gb").units == expected


def test_invalid_properties_are_reported_not_zeroed():
    events = _events(1, None, "abc", 2) + [{"transaction_id": "t9", "timestamp": 9, "properties": {}}]
    result = aggregation.aggregate("sum", events, "gb")
    assert (result.units, result.events_count) == (3, 2)
    assert result.invalid == ("t1", "t2", "t9")
    assert aggregation.aggregate("count", events).units == 5
    assert aggregation.aggregate("sum", [], "gb").units == 0
    with pytest.raises(ValueError):
        aggregation.aggregate("median", events, "gb")
