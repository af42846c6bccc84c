"""Exact money and quantity arithmetic with ``Decimal`` (never floats)."""
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation


def to_decimal(value):
    """int/float/str/Decimal → finite Decimal; floats go through ``str`` (0.1 stays 0.1)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, float):
        value = str(value)
    try:
        result = Decimal(value.strip() if isinstance(value, str) else value)
    except (InvalidOperation, TypeError):
        raise ValueError(f"not a number: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def round_money(amount, decimals=2):
    """Round half up to the currency's minor unit (as Odoo's currency rounding does)."""
    return to_decimal(amount).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def to_minor_units(amount, decimals=2):
    """Major units → integer minor units (12.345 CAD → 1235)."""
    return int(round_money(amount, decimals).scaleb(decimals))


def from_minor_units(cents, decimals=2):
    """Integer minor units → Decimal major units (1235 → 12.35)."""
    return Decimal(int(cents)).scaleb(-decimals)
