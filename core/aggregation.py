"""Metric aggregations over a billing period (count, sum, max, latest, unique count).

An app may send one event per occurrence or one "aggregate push" per period carrying the
counter; for sum, max and latest both give the same units. Events whose property is
missing or not numeric are not counted as zero silently: they are returned in ``invalid``
so the caller can surface them.
"""
from dataclasses import dataclass, field
from decimal import Decimal

from .money import to_decimal

AGGREGATIONS = ("count", "sum", "max", "latest", "unique_count")


@dataclass(frozen=True)
class Aggregate:
    units: Decimal
    events_count: int
    invalid: tuple = field(default=())


def property_value(aggregation, properties, field_name):
    """The value an event contributes, or None when it has none usable."""
    if aggregation == "count":
        return Decimal(1)
    value = (properties or {}).get(field_name)
    if aggregation == "unique_count":
        return None if value in (None, "") else str(value)
    try:
        return to_decimal(value)
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
        value = property_value(aggregation, event.get("properties"), field_name)
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
