"""Rating engine: a period's units → money, with Lago's charge models (lago-api.md §3.2).

The plan's included quota is consumed first; the charge model prices what is left
(``billable_units``). Properties are Lago's: decimal strings in major currency units.
Everything is ``Decimal``; only the final amount is rounded (half up) to the currency.
"""
import math
from dataclasses import dataclass, field
from decimal import Decimal

from .money import round_money, to_decimal

CHARGE_MODELS = ("standard", "package", "graduated", "volume", "percentage")
ZERO = Decimal(0)
HUNDRED = Decimal(100)


@dataclass(frozen=True)
class Rating:
    units: Decimal
    included_units: Decimal
    billable_units: Decimal
    precise_amount: Decimal
    amount: Decimal
    amount_minor: int
    details: object = field(default_factory=dict)


# ---------------------------------------------------------------------------- validation
def _decimal_error(properties, key, required=True, integer=False, minimum=ZERO):
    """Lago error code for ``properties[key]``, or None when valid."""
    value = properties.get(key)
    if value is None or value == "":
        return "value_is_mandatory" if required else None
    try:
        number = to_decimal(value)
    except ValueError:
        return "value_is_invalid"
    if number < minimum or (integer and number != number.to_integral_value()):
        return "value_is_invalid"
    return None


def _ranges_valid(ranges, amount_keys):
    """Tiers start at 0, are contiguous (adjacent or "+1" style), end open, carry valid amounts."""
    if not isinstance(ranges, list) or not ranges:
        return False
    previous_to = None
    for index, tier in enumerate(ranges):
        if not isinstance(tier, dict) or any(_decimal_error(tier, key, required=False) for key in amount_keys):
            return False
        if _decimal_error(tier, "from_value") or _decimal_error(tier, "to_value", required=False):
            return False
        start = to_decimal(tier["from_value"])
        end = tier.get("to_value")
        end = None if end in (None, "") else to_decimal(end)
        if index == 0 and start != 0:
            return False
        if index and start not in (previous_to, previous_to + 1):
            return False
        last = index == len(ranges) - 1
        if (end is None) != last or (end is not None and end <= start):
            return False
        previous_to = end
    return True


def validate_properties(charge_model, properties):
    """Lago-style ``{field: [code]}`` errors of a charge's properties (empty = valid)."""
    if charge_model not in CHARGE_MODELS:
        return {"charge_model": ["value_is_invalid"]}
    if not isinstance(properties, dict):
        return {"properties": ["value_is_invalid"]}
    checks = {
        "standard": [("amount", {})],
        "package": [("amount", {}), ("package_size", {"integer": True, "minimum": Decimal(1)}),
                    ("free_units", {"required": False, "integer": True})],
        "percentage": [("rate", {}), ("fixed_amount", {"required": False}),
                       ("free_units_per_events", {"required": False, "integer": True}),
                       ("free_units_per_total_aggregation", {"required": False}),
                       ("per_transaction_min_amount", {"required": False}),
                       ("per_transaction_max_amount", {"required": False})],
    }
    errors = {}
    for key, options in checks.get(charge_model, []):
        code = _decimal_error(properties, key, **options)
        if code:
            errors[key] = [code]
    if charge_model == "graduated" and not _ranges_valid(
            properties.get("graduated_ranges"), ("per_unit_amount", "flat_amount")):
        errors["graduated_ranges"] = ["invalid_graduated_ranges"]
    if charge_model == "volume" and not _ranges_valid(
            properties.get("volume_ranges"), ("per_unit_amount", "flat_amount")):
        errors["volume_ranges"] = ["invalid_volume_ranges"]
    if charge_model == "percentage" and not errors:
        low, high = properties.get("per_transaction_min_amount"), properties.get("per_transaction_max_amount")
        if low not in (None, "") and high not in (None, "") and to_decimal(low) > to_decimal(high):
            errors["per_transaction_max_amount"] = ["value_is_invalid"]
    return errors


# ---------------------------------------------------------------------------- models
def _get(properties, key, default=ZERO):
    value = properties.get(key)
    return default if value in (None, "") else to_decimal(value)


def _standard(properties, units, **_kw):
    return units * _get(properties, "amount"), {}


def _package(properties, units, **_kw):
    paid = units - _get(properties, "free_units")
    if paid <= 0:
        return ZERO, {"packages": 0}
    packages = math.ceil(paid / _get(properties, "package_size", Decimal(1)))
    return packages * _get(properties, "amount"), {"packages": packages}


def _tiers(ranges):
    """Normalised tiers: (first unit counted, last unit or None, per unit, flat, +1 style)."""
    previous_to = None
    for tier in ranges:
        start = to_decimal(tier["from_value"])
        end = tier.get("to_value")
        end = None if end in (None, "") else to_decimal(end)
        plus_one = previous_to is not None and start == previous_to + 1
        yield start, end, _get(tier, "per_unit_amount"), _get(tier, "flat_amount"), plus_one, previous_to
        previous_to = end


def _graduated(properties, units, **_kw):
    """Every tier reached charges its units × per-unit price plus its flat fee (the first one always)."""
    total, breakdown = ZERO, []
    for start, end, per_unit, flat, plus_one, previous_to in _tiers(properties["graduated_ranges"]):
        if previous_to is not None and units <= previous_to:
            break
        top = units if end is None else min(units, end)
        tier_units = max(top - start + (1 if plus_one else 0), ZERO)
        amount = tier_units * per_unit + flat
        total += amount
        breakdown.append({"from_value": start, "to_value": end, "units": tier_units, "amount": amount})
    return total, breakdown


def _volume(properties, units, **_kw):
    """All units at the price of the one tier containing the total, plus its flat fee (0 units: no fee)."""
    if units <= 0:
        return ZERO, {}
    for start, end, per_unit, flat, _plus_one, _previous in _tiers(properties["volume_ranges"]):
        if end is None or units <= end:
            return units * per_unit + flat, {"from_value": start, "to_value": end}
    raise AssertionError("validated volume ranges always end open")


def _percentage(properties, units, events_count=0, event_amounts=None, **_kw):
    """Rate on the amount beyond the free amount, plus a fixed fee per paying event."""
    rate = _get(properties, "rate") / HUNDRED
    fixed = _get(properties, "fixed_amount")
    free_events = int(_get(properties, "free_units_per_events"))
    free_total = properties.get("free_units_per_total_aggregation")
    free_amount = ZERO
    if free_events and event_amounts is not None:
        free_amount = sum((to_decimal(a) for a in event_amounts[:free_events]), ZERO)
        if free_total not in (None, ""):
            free_amount = min(free_amount, to_decimal(free_total))
    elif free_total not in (None, ""):
        free_amount = to_decimal(free_total)
    low = properties.get("per_transaction_min_amount")
    high = properties.get("per_transaction_max_amount")
    if event_amounts is not None and (low not in (None, "") or high not in (None, "")):
        total = ZERO
        for amount in event_amounts[free_events:]:
            fee = to_decimal(amount) * rate + fixed
            if low not in (None, ""):
                fee = max(fee, to_decimal(low))
            if high not in (None, ""):
                fee = min(fee, to_decimal(high))
            total += fee
        return total, {"clamped_per_transaction": True}
    percentage_part = max(units - free_amount, ZERO) * rate
    fixed_part = max(events_count - free_events, 0) * fixed
    return percentage_part + fixed_part, {"percentage": percentage_part, "fixed": fixed_part}


MODELS = {"standard": _standard, "package": _package, "graduated": _graduated,
          "volume": _volume, "percentage": _percentage}


def rate(charge_model, properties, units, *, included_units=0, events_count=0, event_amounts=None, decimals=2):
    """Rate one period's ``units`` with a charge: included quota first, then the charge model."""
    errors = validate_properties(charge_model, properties)
    if errors:
        raise ValueError(f"invalid {charge_model} properties: {errors}")
    units = to_decimal(units)
    included = to_decimal(included_units)
    billable = max(units - included, ZERO)
    precise, details = MODELS[charge_model](
        properties, billable, events_count=events_count, event_amounts=event_amounts)
    amount = round_money(precise, decimals)
    return Rating(units=units, included_units=included, billable_units=billable, precise_amount=precise,
                  amount=amount, amount_minor=int(amount.scaleb(decimals)), details=details)
