"""Lago wire format (lago-api.md §1, §2, §4, §6): envelopes, validation, pagination, serialisation.

Controllers stay thin: ``parse_json`` → ``require_root`` → ``validate_*`` → ORM →
serialiser → ``dumps``. Every problem is a :class:`LagoError` carrying Lago's exact
envelope, so nothing reaches the client as a 500 or an HTML page.
"""
import hashlib
import json
import math
import re
from datetime import date, datetime, timezone
from decimal import Decimal
from urllib.parse import urlsplit

from . import errors, money
from .money import to_decimal

DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
MAX_BATCH_EVENTS = 100
ISO_CURRENCY = re.compile(r"^[A-Z]{3}$")
ISO_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
UNIX_SECONDS = re.compile(r"^\d{1,12}(\.\d{1,9})?$")

# ---------------------------------------------------------------------------- limits
# Every bound on what a client sends, checked before anything is converted or stored. ``LIMITS``
# is what the OpenAPI document states (controllers/openapi.py), so the two cannot drift apart.
MAX_BODY_BYTES = 1024 * 1024
MAX_DEPTH = 20                 # nesting of objects/arrays in a body, its root object included
MAX_ID_LENGTH = 255            # path ids and identifier fields
MAX_QUERY_LENGTH = 1000        # each query-string value
MAX_PAGE = 1_000_000
MAX_APP_BILLS = 1000           # bills per POST /reconciliation/app_bills
MAX_CENTS = 10 ** 13           # an amount in minor units (a hundred billion dollars)
MAX_INTEGER = 2 ** 31 - 1      # integer fields (e.g. net_payment_term)
DATE_MIN = datetime(1970, 1, 1, tzinfo=timezone.utc)
DATE_MAX = datetime(2100, 1, 1, tzinfo=timezone.utc)  # exclusive: period arithmetic stays far from year 9999
# What PostgreSQL text cannot hold (NUL) and what UTF-8 cannot encode (lone surrogates).
FORBIDDEN_TEXT = re.compile("[\x00\ud800-\udfff]")
LIMITS = {
    "body": {"max_bytes": MAX_BODY_BYTES},
    "json": {"max_depth": MAX_DEPTH, "strings": "no NUL (U+0000) and no lone surrogate (U+D800–U+DFFF), "
                                                "in values and in keys"},
    "number": {"maximum_magnitude": f"1e{money.MAX_INTEGER_DIGITS}",
               "max_integer_digits": money.MAX_INTEGER_DIGITS, "max_fraction_digits": money.MAX_FRACTION_DIGITS,
               "max_literal_length": money.MAX_NUMBER_TEXT,
               "applies_to": "every JSON number, and numeric strings read as numbers (metric properties, "
                             "precise_total_amount_cents, timestamps)"},
    "dates": {"from": DATE_MIN.isoformat(), "before": DATE_MAX.isoformat(),
              "applies_to": "event timestamps, subscription_at, ending_at, date query parameters, app bill periods"},
    "ids": {"max_length": MAX_ID_LENGTH},
    "query": {"max_length": MAX_QUERY_LENGTH, "page": {"minimum": 1, "maximum": MAX_PAGE},
              "per_page": {"minimum": 1, "maximum": MAX_PER_PAGE, "larger": "served as the maximum"}},
    "events_batch": {"max_events": MAX_BATCH_EVENTS},
    "app_bills": {"max_bills": MAX_APP_BILLS, "max_abs_cents": MAX_CENTS},
}


# ---------------------------------------------------------------------------- errors
class LagoError(Exception):
    """An HTTP error with Lago's JSON envelope as ``body``."""

    def __init__(self, status, body):
        super().__init__(status, body)
        self.status = status
        self.body = body


def unauthorized():
    return LagoError(401, {"status": 401, "error": "Unauthorized"})


def forbidden(code):
    return LagoError(403, {"status": 403, "error": "Forbidden", "code": code})


def not_found(resource):
    return LagoError(404, {"status": 404, "error": "Not Found", "code": f"{resource}_not_found"})


def method_not_allowed(code):
    return LagoError(405, {"status": 405, "error": "Method Not Allowed", "code": code})


def validation(error_details):
    return LagoError(422, {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
                           "error_details": error_details})


def bad_request(message):
    return LagoError(400, {"status": 400, "error": f"BadRequest: {message}"})


def payload_too_large():
    """Lago has no such envelope; ours follows its shape."""
    return LagoError(413, {"status": 413, "error": "Payload Too Large", "code": "payload_too_large"})


RETRY_AFTER_SECONDS = 2


def retry_later():
    """Odoo's replays of a conflicting transaction ran out: nothing was stored, the client may retry
    (events are idempotent by transaction id). Sent with ``Retry-After``; Lago has no such envelope."""
    return LagoError(503, {"status": 503, "error": "Service Unavailable", "code": "conflict_retry_later"})


def internal_error():
    return LagoError(500, {"status": 500, "error": "Internal Server Error"})


def from_domain_error(error):
    """The Lago envelope of a model's domain error (``core.errors``)."""
    if isinstance(error, errors.NotFound):
        return not_found(error.resource)
    if isinstance(error, errors.NotAllowed):
        return method_not_allowed(error.code)
    if isinstance(error, errors.Invalid):
        return validation(error.details)
    return validation({"base": [str(error)]})


# ---------------------------------------------------------------------------- parsing
def parse_json(raw, *, max_bytes=MAX_BODY_BYTES):
    """Request body → dict, or 400/413 for anything else (bad UTF-8, bad JSON, non-object root).

    Numbers are bounded on their literal before conversion and, with nesting depth and string
    content, checked over the whole tree before anything reads it: 422 ``validation_errors``
    naming each offending field (``value_is_out_of_range``, ``too_deep``, ``value_is_invalid``).
    """
    if raw is None or len(raw) == 0:
        raise bad_request("empty request body")
    if len(raw) > max_bytes:
        raise payload_too_large()
    try:
        payload = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw,
                             parse_float=_json_float, parse_int=_json_int, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("malformed JSON body") from None
    if not isinstance(payload, dict):
        raise bad_request("the JSON body must be an object")
    problems = _tree_problems(payload)
    if problems:
        raise validation(problems)
    return payload


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


class _OutOfRange:
    """Stands in for a JSON number beyond the bounds: reported by ``_tree_problems``, never converted."""

    __slots__ = ()


_OUT_OF_RANGE = _OutOfRange()


def _json_int(text):
    return _OUT_OF_RANGE if len(text.lstrip("-")) > money.MAX_INTEGER_DIGITS else int(text)


def _json_float(text):
    try:
        return money.parse_bounded(text)
    except ValueError:
        return _OUT_OF_RANGE


def _tree_problems(payload):
    """Lago ``error_details`` of every bound a parsed body breaks (iterative: any depth is safe).

    One walk checks every key (whatever its value: a scalar, an object or a list) and every value;
    a container carries a link to its parent rather than its path, which is only spelt out for a
    problem (the common, clean body builds none)."""
    details = {}
    stack = [(payload, 1, None)]
    while stack:
        value, depth, parent = stack.pop()
        if depth > MAX_DEPTH:
            _add_problem(details, _path(parent), "too_deep")
            continue
        if isinstance(value, dict):
            items = value.items()
            bad_keys = FORBIDDEN_TEXT.search("".join(value)) is not None  # one search for all the keys
        else:
            items, bad_keys = enumerate(value), False
        for key, item in items:
            if bad_keys and FORBIDDEN_TEXT.search(key):
                _add_problem(details, _path((key, parent)), "value_is_invalid")
            elif isinstance(item, (dict, list)):
                stack.append((item, depth + 1, (key, parent)))
            elif item is _OUT_OF_RANGE:
                _add_problem(details, _path((key, parent)), "value_is_out_of_range")
            elif isinstance(item, str) and FORBIDDEN_TEXT.search(item):
                _add_problem(details, _path((key, parent)), "value_is_invalid")
    return details


def _path(link):
    """The keys from the root to a value, from its ``(key, parent link)`` chain (``None``: the root)."""
    keys = []
    while link is not None:
        key, link = link
        keys.append(key)
    return tuple(reversed(keys))


def _add_problem(details, path, code):
    """Key a problem as Lago does: by the field of the root object (``{"properties": [code]}``),
    or by index then field inside a root list (``{"3": {"properties": [code]}}``)."""
    path = [_printable(part) for part in path]
    if len(path) >= 2 and isinstance(path[1], int):
        target, field = details.setdefault(str(path[1]), {}), (path[2] if len(path) > 2 else path[0])
    else:
        target, field = details, (path[1] if len(path) > 1 else (path[0] if path else "base"))
    codes = target.setdefault(str(field), [])
    if code not in codes:
        codes.append(code)


def _printable(part):
    """A path part safe to echo in the answer (a key may be the very NUL or surrogate reported)."""
    if isinstance(part, str) and FORBIDDEN_TEXT.search(part):
        return part.encode("unicode_escape").decode("ascii")
    return part


def check_text_params(params, kind="query"):
    """Query values or path ids: within length, no NUL or lone surrogate; else 422 naming them.
    ``params``: {name: value or [values]}."""
    limit = MAX_QUERY_LENGTH if kind == "query" else MAX_ID_LENGTH
    bad = {}
    for name, values in params.items():
        for value in values if isinstance(values, list) else [values]:
            if not isinstance(value, str) or len(value) > limit or FORBIDDEN_TEXT.search(value):
                bad[_printable(name)] = ["value_is_invalid"]
    if bad:
        raise validation(bad)


def parse_record_id(value):
    """A database id given in a path (``invoices/<lago_id>``) → int, or None when it cannot be one."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]{1,10}", value) and 0 < int(value) <= MAX_INTEGER:
        return int(value)
    return None


def require_root(payload, key):
    """The object wrapped in ``key`` (Lago's ``{"customer": {...}}``), or 400."""
    value = payload.get(key)
    if not isinstance(value, dict) or not value:
        raise bad_request(f"param is missing or the value is empty or invalid: {key}")
    return value


class _Checker:
    """Collects ``{field: [code]}`` while cleaning an object's fields."""

    def __init__(self, obj):
        self.obj = obj
        self.clean = {}
        self.errors = {}

    def fail(self, key, code):
        self.errors.setdefault(key, []).append(code)

    def string(self, key, required=False, pattern=None, choices=None, max_length=255, transform=None):
        if key not in self.obj:
            if required:
                self.fail(key, "value_is_mandatory")
            return
        value = self.obj[key]
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.fail(key, "value_is_mandatory")
            else:
                self.clean[key] = None
            return
        if not isinstance(value, str) or len(value) > max_length:
            self.fail(key, "value_is_invalid")
            return
        value = value.strip()
        if transform:
            value = transform(value)
        if (pattern and not pattern.match(value)) or (choices and value not in choices):
            self.fail(key, "value_is_invalid")
            return
        self.clean[key] = value

    def integer(self, key, minimum=0, maximum=MAX_INTEGER, required=False):
        if key not in self.obj or self.obj[key] is None:
            if required:
                self.fail(key, "value_is_mandatory")
            elif key in self.obj:
                self.clean[key] = None
            return
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, "value_is_invalid")
        elif value > maximum:
            self.fail(key, "value_is_out_of_range")
        else:
            self.clean[key] = value

    def datetime(self, key):
        if key not in self.obj:
            return
        value = self.obj[key]
        if value is None:
            self.clean[key] = None
            return
        try:
            self.clean[key] = parse_iso_datetime(value)
        except ValueError:
            self.fail(key, "invalid_date")

    def passthrough(self, key, kind):
        """Structured extras kept as sent (dict/list), type-checked only."""
        if key in self.obj:
            value = self.obj[key]
            if value is not None and not isinstance(value, kind):
                self.fail(key, "value_is_invalid")
            else:
                self.clean[key] = value

    def result(self):
        if self.errors:
            raise validation(self.errors)
        return self.clean


def parse_iso_datetime(value):
    """ISO-8601 string → aware UTC datetime (naive input is taken as UTC), between ``DATE_MIN``
    (included) and ``DATE_MAX`` (excluded), else ValueError."""
    if not isinstance(value, str) or not value.strip() or len(value) > 64:
        raise ValueError("not an ISO-8601 datetime")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    if not DATE_MIN <= parsed < DATE_MAX:  # compared aware: no conversion overflows near year 1 or 9999
        raise ValueError("date out of range")
    return parsed.astimezone(timezone.utc)


def parse_iso_date(value):
    """``YYYY-MM-DD`` → date within the date bounds, else ValueError (TypeError for a non-string)."""
    if not isinstance(value, str) or len(value) > 10:
        raise ValueError("not an ISO-8601 date")
    parsed = date.fromisoformat(value)
    if not DATE_MIN.date() <= parsed < DATE_MAX.date():
        raise ValueError("date out of range")
    return parsed


def parse_date_param(value, key):
    """``YYYY-MM-DD`` query parameter → date, or 422 ``invalid_date``."""
    try:
        return parse_iso_date(value)
    except (TypeError, ValueError):
        raise validation({key: ["invalid_date"]}) from None


def parse_datetime_param(value, key):
    """ISO-8601 query parameter → naive UTC datetime (Odoo's convention), or 422 ``invalid_date``."""
    try:
        return parse_iso_datetime(value).replace(tzinfo=None)
    except ValueError:
        raise validation({key: ["invalid_date"]}) from None


CUSTOMER_STRINGS = ("name", "firstname", "lastname", "email", "phone", "url", "address_line1", "address_line2",
                    "city", "zipcode", "state", "legal_name", "legal_number", "tax_identification_number",
                    "timezone", "logo_url", "billing_entity_code", "finalize_zero_amount_invoice")


def validate_customer(obj, timezones=None):
    """Clean a customer payload; only keys present in ``obj`` are returned (upsert semantics).

    ``timezones``: the time zone names the caller can store (Odoo's selection); others are 422.
    """
    check = _Checker(obj)
    check.string("external_id", required=True)
    for key in CUSTOMER_STRINGS:
        check.string(key, max_length=1000 if key in ("url", "logo_url", "address_line1", "address_line2") else 255)
    check.string("currency", pattern=ISO_CURRENCY, transform=str.upper)
    check.string("country", pattern=ISO_COUNTRY, transform=str.upper)
    check.string("customer_type", choices=("company", "individual"))
    if check.clean.get("url") and not is_website(check.clean["url"]):
        del check.clean["url"]
        check.fail("url", "value_is_invalid")
    if timezones is not None and check.clean.get("timezone") and check.clean["timezone"] not in timezones:
        del check.clean["timezone"]
        check.fail("timezone", "value_is_invalid")
    check.integer("net_payment_term")
    check.passthrough("metadata", list)
    check.passthrough("billing_configuration", dict)
    check.passthrough("shipping_address", dict)
    check.passthrough("tax_codes", list)
    return check.result()


def is_website(value):
    """Whether ``value`` parses as a URL the way Odoo stores a partner's website
    (``res.partner._clean_website``: a value without a scheme is taken as a host, e.g.
    ``www.maple.example``): an unbalanced ``[`` or ``]`` in the host is not one (Odoo raises)."""
    candidate = value if "://" in value or value.startswith("//") else f"//{value}"
    try:
        urlsplit(candidate)
    except ValueError:
        return False
    return True


def validate_subscription_create(obj):
    check = _Checker(obj)
    for key in ("external_customer_id", "plan_code", "external_id"):
        check.string(key, required=True)
    check.string("name")
    check.string("billing_time", choices=("calendar", "anniversary"))
    check.datetime("subscription_at")
    check.datetime("ending_at")
    return check.result()


def parse_timestamp(value, now):
    """Unix seconds (int, float or decimal string) → aware UTC datetime; None → ``now``."""
    if value is None:
        return now
    if isinstance(value, bool):
        raise ValueError("a boolean is not a timestamp")
    if isinstance(value, str):
        if not UNIX_SECONDS.match(value.strip()):
            raise ValueError("not Unix seconds")
        value = Decimal(value.strip())
    number = money.parse_bounded(value)
    if number < 0 or number >= int(DATE_MAX.timestamp()):
        raise ValueError("timestamp out of range")
    seconds = math.floor(number)
    micros = int(((number - seconds) * 1_000_000).to_integral_value())
    return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(microsecond=min(micros, 999_999))


def validate_event(obj, now):
    """Clean one event: ids and code required, timestamp Unix seconds (default now), properties a dict."""
    if not isinstance(obj, dict):
        raise validation({"event": ["value_is_invalid"]})
    check = _Checker(obj)
    for key in ("transaction_id", "external_subscription_id", "code"):
        check.string(key, required=True)
    try:
        check.clean["timestamp"] = parse_timestamp(obj.get("timestamp"), now)
    except ValueError:
        check.fail("timestamp", "invalid_format")
    properties = obj.get("properties")
    if properties is not None and not isinstance(properties, dict):
        check.fail("properties", "value_is_invalid")
    check.clean["properties"] = _jsonable(properties or {})
    precise = obj.get("precise_total_amount_cents")
    if precise is not None:
        try:
            check.clean["precise_total_amount_cents"] = money.parse_bounded(precise)
        except money.OutOfRange:
            check.fail("precise_total_amount_cents", "value_is_out_of_range")
        except ValueError:
            check.fail("precise_total_amount_cents", "value_is_invalid")
    else:
        check.clean["precise_total_amount_cents"] = None
    clean = check.result()
    clean["fingerprint"] = event_fingerprint(clean, timestamp_sent=obj.get("timestamp") is not None)
    return clean


def _jsonable(value):
    """Decimals parsed from JSON go back to plain JSON numbers (ints stay ints)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    return value


def event_fingerprint(clean, timestamp_sent=True):
    """Stable hash of an event's content as sent: equal for an exact replay, different for a conflict.

    A timestamp the server defaulted to "now" is not part of it: a client retrying an event it
    sent without a timestamp is replaying it, not conflicting with it.
    """
    canonical = json.dumps({
        "transaction_id": clean["transaction_id"],
        "external_subscription_id": clean["external_subscription_id"],
        "code": clean["code"],
        "timestamp": clean["timestamp"].isoformat() if timestamp_sent else None,
        "properties": clean["properties"],
        "precise_total_amount_cents": None if clean.get("precise_total_amount_cents") is None
        else str(clean["precise_total_amount_cents"].normalize()),
    }, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def validate_batch(payload, now, max_events=MAX_BATCH_EVENTS):
    """Clean ``{"events": [...]}``: all or nothing, errors keyed by index as Lago does.

    Two events with the same (subscription, transaction id) in one batch are a 422,
    unless identical (then the second is a replay of the first).
    """
    events = payload.get("events")
    if not isinstance(events, list):
        raise bad_request("param is missing or the value is empty or invalid: events")
    if not events:
        raise validation({"events": ["no_events"]})
    if len(events) > max_events:
        raise validation({"events": ["too_many_events"]})
    cleaned, errors, seen = [], {}, {}
    for index, obj in enumerate(events):
        try:
            clean = validate_event(obj, now)
        except LagoError as error:
            errors[str(index)] = error.body["error_details"]
            continue
        key = (clean["external_subscription_id"], clean["transaction_id"])
        if key in seen and seen[key] != clean["fingerprint"]:
            errors[str(index)] = {"transaction_id": ["value_already_exist"]}
        seen.setdefault(key, clean["fingerprint"])
        cleaned.append(clean)
    if errors:
        raise validation(errors)
    return cleaned


def validate_app_bills(payload):
    """``POST /reconciliation/app_bills``: amounts an app billed, per subscription and period, all or
    nothing. Ids are strings, periods ISO dates within the date bounds (end after start), amounts
    integer minor units within ±``MAX_CENTS``, ``usage`` an object of metric code → such an amount.
    Returns the bills with the same keys and plain types (dates stay ISO strings)."""
    bills = payload.get("app_bills")
    if not isinstance(bills, list) or not bills:
        raise validation({"app_bills": ["value_is_mandatory"]})
    if len(bills) > MAX_APP_BILLS:
        raise validation({"app_bills": ["too_many_app_bills"]})
    cleaned, problems = [], {}
    for index, bill in enumerate(bills):
        if not isinstance(bill, dict):
            problems[str(index)] = {"app_bill": ["value_is_invalid"]}
            continue
        check = _Checker(bill)
        check.string("external_subscription_id", required=True, max_length=MAX_ID_LENGTH)
        for key in ("external_customer_id", "plan_code"):
            check.string(key, max_length=MAX_ID_LENGTH)
        check.string("currency", pattern=ISO_CURRENCY, transform=str.upper)
        dates = {}
        for key in ("period_start", "period_end"):
            try:
                dates[key] = parse_iso_date(bill.get(key))
                check.clean[key] = bill[key]
            except (TypeError, ValueError):
                check.fail(key, "invalid_date")
        if len(dates) == 2 and dates["period_end"] <= dates["period_start"]:
            check.fail("period_end", "value_is_invalid")
        for key in ("base_fee_cents", "tax_cents"):
            check.integer(key, minimum=-MAX_CENTS, maximum=MAX_CENTS)
        usage = bill.get("usage")
        if usage is not None:
            if not isinstance(usage, dict) or len(usage) > 1000 or any(
                    len(code) > MAX_ID_LENGTH or isinstance(cents, bool) or not isinstance(cents, int)
                    for code, cents in usage.items()):
                check.fail("usage", "value_is_invalid")
            elif any(abs(cents) > MAX_CENTS for cents in usage.values()):
                check.fail("usage", "value_is_out_of_range")
            else:
                check.clean["usage"] = dict(usage)
        if check.errors:
            problems[str(index)] = check.errors
        else:
            cleaned.append(check.clean)
    if problems:
        raise validation(problems)
    return cleaned


# ---------------------------------------------------------------------------- pagination
def invoice_filters(query):
    """Invoice list filters of a query string (a multidict) → plain keyword values for the model:
    Lago status and payment status names, issuing dates."""
    return {
        "statuses": query.getlist("statuses[]") or query.getlist("status"),
        "payment_statuses": query.getlist("payment_statuses[]") or query.getlist("payment_status"),
        "issuing_date_from": parse_date_param(query["issuing_date_from"], "issuing_date_from")
        if query.get("issuing_date_from") else None,
        "issuing_date_to": parse_date_param(query["issuing_date_to"], "issuing_date_to")
        if query.get("issuing_date_to") else None,
    }


def parse_pagination(query, default_per_page=DEFAULT_PER_PAGE, max_per_page=MAX_PER_PAGE):
    """``page``/``per_page`` from a dict of lists (or values) → (1 ≤ page ≤ ``MAX_PAGE``,
    1 ≤ per_page ≤ max; a larger per_page is served as the max); junk → 422."""
    page = parse_int_param(query.get("page"), "page", maximum=MAX_PAGE)
    per_page = parse_int_param(query.get("per_page"), "per_page", maximum=10 ** 7)
    return page or 1, min(per_page or default_per_page, max_per_page)


def parse_int_param(value, key, minimum=1, maximum=MAX_PAGE):
    """A positive integer query parameter (ASCII digits only: ``²`` is not 2) → int, None when
    absent; else 422 ``value_is_invalid``."""
    if isinstance(value, list):
        value = value[0] if value else None
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,10}", text) or not minimum <= int(text) <= maximum:
        raise validation({key: ["value_is_invalid"]})
    return int(text)


def meta(page, per_page, total_count):
    if total_count == 0:
        return {"current_page": 0, "next_page": None, "prev_page": None, "total_pages": 0, "total_count": 0}
    total_pages = math.ceil(total_count / per_page)
    return {
        "current_page": page,
        "next_page": page + 1 if page < total_pages else None,
        "prev_page": page - 1 if page > 1 else None,
        "total_pages": total_pages,
        "total_count": total_count,
    }


# ---------------------------------------------------------------------------- serialisation
def iso(value, milliseconds=False):
    """datetime (naive = UTC) → ``YYYY-MM-DDTHH:MM:SSZ`` (or ``.mmmZ``); date → ``YYYY-MM-DD``."""
    if value is None or value is False:
        return None
    if isinstance(value, datetime):
        if value.tzinfo:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        if milliseconds:
            return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def units(value):
    """Usage units as Lago sends them: a decimal string without exponent or trailing zeros."""
    return format(to_decimal(value or 0).normalize(), "f")


_JSON_SCALARS = (str, int, float)


def _plain(value):
    """Recursively: datetimes/dates → ISO strings, Decimals → strings, False → None."""
    if value is False:
        return None
    if value is None or type(value) in _JSON_SCALARS:  # the common case, checked first (hot path)
        return value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, (datetime, date)):
        return iso(value)
    if isinstance(value, Decimal):
        return units(value)
    if value is False:
        return None
    return value


def _with(record, defaults, **formatted):
    out = dict(defaults)
    out.update(_plain(record))
    out.update(formatted)
    return out


def customer(d):
    return _with(d, {"metadata": [], "taxes": [], "integration_customers": [], "billing_configuration": {}},
                 applicable_timezone=d.get("applicable_timezone") or "UTC")


def plan(d):
    return _with(d, {"charges": [], "taxes": [], "usage_thresholds": [], "minimum_commitment": None})


def subscription(d):
    out = _with(d, {"entitlements": [], "applicable_usage_thresholds": [], "activation_rules": []},
                started_at=iso(d.get("started_at"), milliseconds=True))
    if d.get("plan") is not None:
        out["plan"] = plan(d["plan"])
    return out


def event(d):
    out = _with(d, {}, timestamp=iso(d.get("timestamp"), milliseconds=True))
    if d.get("precise_total_amount_cents") is not None:
        out["precise_total_amount_cents"] = units(d["precise_total_amount_cents"])
    return out


class Plain(dict):
    """A response already made of JSON values only (``dumps`` does not walk it again)."""


def events(values):
    """Lago ``{"events": [...]}`` of many event values, the batch endpoint's answer: built flat
    (an event's values are plain but for its two datetimes and its amount; its properties are
    stored JSON), as it serialises up to 100 events per call."""
    out = []
    for d in values:
        item = {key: (None if value is False else value) for key, value in d.items()}
        item["timestamp"] = iso(d.get("timestamp"), milliseconds=True)
        item["created_at"] = iso(d.get("created_at"))
        if d.get("precise_total_amount_cents") is not None:
            item["precise_total_amount_cents"] = units(d["precise_total_amount_cents"])
        out.append(item)
    return Plain(events=out)


def billable_metric(d):
    return _with(d, {"filters": []})


def invoice(d):
    out = _with(d, {"fees": [], "credits": [], "applied_taxes": [], "metadata": [], "subscriptions": []})
    if d.get("customer") is not None:
        out["customer"] = customer(d["customer"])
    if d.get("subscriptions"):
        out["subscriptions"] = [subscription(s) for s in d["subscriptions"]]
    return out


def customer_usage(d):
    out = _with(d, {"lago_invoice_id": None})
    out["charges_usage"] = [_charge_usage(c) for c in d.get("charges_usage", [])]
    return out


def _charge_usage(c):
    out = _with(c, {"filters": [], "grouped_usage": [], "pricing_unit_details": None, "presentation_breakdowns": []})
    out["units"] = units(c.get("units"))
    out["total_aggregated_units"] = units(c.get("total_aggregated_units", c.get("units")))
    return out


usage_period = customer_usage


def dumps(obj):
    """Compact JSON bytes of a response (Decimals as strings, datetimes ISO, False as null)."""
    return json.dumps(obj if isinstance(obj, Plain) else _plain(obj), separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")
