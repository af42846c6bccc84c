"""Metric aggregations over a billing period (count, sum, max, latest, unique count).

An app may send one event per occurrence or one "aggregate push" per period carrying the
counter; for sum, max and latest both give the same units. Events whose property is
missing or not numeric are not counted as zero silently: they are returned in ``invalid``
so the caller can surface them.
"""
from dataclasses import dataclass, field
from decimal import Decimal

from .money import OutOfRange, parse_bounded

AGGREGATIONS = ("count", "sum", "max", "latest", "unique_count")


@dataclass(frozen=True)
class Aggregate:
    units: Decimal
    events_count: int
    invalid: tuple = field(default=())


def property_value(aggregation, properties, field_name):
    """The value an event contributes, or None when it has none usable.

    A number beyond the bounds of ``money.parse_bounded`` (e.g. the string ``"1e999999999"``)
    raises :class:`~.money.OutOfRange`: the caller rejects the event rather than rate it.
    """
    if aggregation == "count":
        return Decimal(1)
    value = (properties or {}).get(field_name)
    if aggregation == "unique_count":
        return None if value in (None, "") else str(value)
    try:
        return parse_bounded(value)
    except OutOfRange:
        raise
    except ValueError:
        return None


def aggregate(aggregation, events, field_name=None):
    """Aggregate ``events`` (dicts with ``timestamp`` and ``properties``) of one period.

    ``latest`` takes the value of the greatest timestamp; on a tie the later event wins.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    values, invalid = [], []
    for position, event in enumerate(events):
        try:
            value = property_value(aggregation, event.get("properties"), field_name)
        except OutOfRange:
            value = None
        if value is None:
            invalid.append(event.get("transaction_id", position))
        else:
            values.append((event.get("timestamp"), position, value))
    if aggregation == "count":
        units = Decimal(len(values))
    elif aggregation == "sum":
        units = sum((value for _ts, _pos, value in values), Decimal(0))
    elif aggregation == "max":
        units = max((value for _ts, _pos, value in values), default=Decimal(0))
    elif aggregation == "latest":
        units = max(values, key=lambda v: (v[0], v[1]))[2] if values else Decimal(0)
    else:
        units = Decimal(len({value for _ts, _pos, value in values}))
    return Aggregate(units=units, events_count=len(values), invalid=tuple(invalid))


def merge(aggregation, current, later):
    """Fold a later contribution into a period's usage, both ``(units, events_count, last_event_at)``
    (``last_event_at`` may be None): what the usage row holds plus a delta appended since. A period
    without a row starts from its first contribution (not from zero: a max may be negative).

    count/sum add, max keeps the greatest, latest keeps the value of the greatest timestamp (on a
    tie the later contribution wins, as events do). unique_count cannot be merged from numbers:
    its units are left as they are and recounted from the events by the caller.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}")
    units, count, last = current
    later_units, later_count, later_last = later
    if aggregation in ("count", "sum"):
        units = units + later_units
    elif aggregation == "max":
        units = max(units, later_units)
    elif aggregation == "latest":
        if last is None or (later_last is not None and later_last >= last):
            units = later_units
    newest = max((t for t in (last, later_last) if t is not None), default=None)
    return units, count + later_count, newest
