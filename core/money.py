"""Exact money and quantity arithmetic with ``Decimal`` (never floats)."""
import math
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

# Bounds of a number received from outside (API, app reports): checked on its text BEFORE any
# conversion, so that ``1e10000000`` or a 5,000-digit literal costs nothing (a Decimal that large
# is cheap to hold but ruinous to format, round or turn into an int or float).
MAX_INTEGER_DIGITS = 15    # |x| < 10**15
MAX_FRACTION_DIGITS = 20   # at most 20 significant digits after the decimal point
MAX_NUMBER_TEXT = 40       # characters of a number's literal
NUMBER_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


class OutOfRange(ValueError):
    """A number beyond ``MAX_INTEGER_DIGITS`` / ``MAX_FRACTION_DIGITS`` (or a literal too long)."""


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


def parse_bounded(value):
    """A number from outside (int, float, Decimal or numeric string) → finite ``Decimal`` within the
    bounds above. Raises :class:`OutOfRange` beyond them, ``ValueError`` for what is no number.

    A string is matched and measured before ``Decimal`` sees it; an int is compared, never printed.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    if isinstance(value, int):
        if abs(value) >= 10 ** MAX_INTEGER_DIGITS:
            raise OutOfRange("number out of range")
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        value = repr(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 1000 or not NUMBER_TEXT.match(text):
            raise ValueError("not a number")
        if len(text) > MAX_NUMBER_TEXT:
            raise OutOfRange("number literal too long")
        value = Decimal(text)
    if not isinstance(value, Decimal):
        raise ValueError(f"not a number: {value!r}")
    return within_bounds(value)


def within_bounds(number):
    """``number`` (a Decimal) if it has at most ``MAX_INTEGER_DIGITS`` integer and
    ``MAX_FRACTION_DIGITS`` fractional significant digits, else :class:`OutOfRange`."""
    if not number.is_finite():
        raise ValueError("not a finite number")
    if not number:
        return Decimal(0)
    if number.adjusted() >= MAX_INTEGER_DIGITS:
        raise OutOfRange("number out of range")
    _sign, digits, exponent = number.as_tuple()
    significant = len(digits)
    while significant and digits[significant - 1] == 0:
        significant -= 1
    if -(exponent + len(digits) - significant) > MAX_FRACTION_DIGITS:
        raise OutOfRange("too many decimal places")
    return number
