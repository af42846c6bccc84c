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

from . import errors
from .money import to_decimal

DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 1000
MAX_BATCH_EVENTS = 100
ISO_CURRENCY = re.compile(r"^[A-Z]{3}$")
ISO_COUNTRY = re.compile(r"^[A-Za-z]{2}$")
UNIX_SECONDS = re.compile(r"^\d{1,12}(\.\d{1,9})?$")


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
def parse_json(raw, *, max_bytes=1024 * 1024):
    """Request body → dict, or 400/413 for anything else (bad UTF-8, bad JSON, non-object root)."""
    if raw is None or len(raw) == 0:
        raise bad_request("empty request body")
    if len(raw) > max_bytes:
        raise payload_too_large()
    try:
        payload = json.loads(raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw,
                             parse_float=Decimal, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad_request("malformed JSON body") from None
    if not isinstance(payload, dict):
        raise bad_request("the JSON body must be an object")
    return payload


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


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

    def integer(self, key, minimum=0):
        if key not in self.obj:
            return
        value = self.obj[key]
        if value is None:
            self.clean[key] = None
        elif isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.fail(key, "value_is_invalid")
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
    """ISO-8601 string → aware UTC datetime (naive input is taken as UTC)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("not an ISO-8601 datetime")
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def parse_date_param(value, key):
    """``YYYY-MM-DD`` query parameter → date, or 422 ``invalid_date``."""
    try:
        return date.fromisoformat(value)
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


def validate_customer(obj):
    """Clean a customer payload; only keys present in ``obj`` are returned (upsert semantics)."""
    check = _Checker(obj)
    check.string("external_id", required=True)
    for key in CUSTOMER_STRINGS:
        check.string(key, max_length=1000 if key in ("url", "logo_url", "address_line1", "address_line2") else 255)
    check.string("currency", pattern=ISO_CURRENCY, transform=str.upper)
    check.string("country", pattern=ISO_COUNTRY, transform=str.upper)
    check.string("customer_type", choices=("company", "individual"))
    check.integer("net_payment_term")
    check.passthrough("metadata", list)
    check.passthrough("billing_configuration", dict)
    check.passthrough("shipping_address", dict)
    check.passthrough("tax_codes", list)
    return check.result()


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
    number = to_decimal(value)
    if number < 0 or number > 253402300799:  # year 9999
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
            check.clean["precise_total_amount_cents"] = to_decimal(precise)
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


# ---------------------------------------------------------------------------- pagination
def parse_positive_int(value, key):
    """An optional positive integer query parameter (``None`` when absent); junk → 422."""
    if value in (None, ""):
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise validation({key: ["value_is_invalid"]})
    return int(text)


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
    """``page``/``per_page`` from a dict of lists (or values) → (page ≥ 1, 1 ≤ per_page ≤ max); junk → 422."""
    def read(key, default):
        value = query.get(key)
        if isinstance(value, list):
            value = value[0] if value else None
        if value in (None, ""):
            return default
        text = str(value).strip()
        if not text.isdigit() or int(text) < 1:
            raise validation({key: ["value_is_invalid"]})
        return int(text)
    return read("page", 1), min(read("per_page", default_per_page), max_per_page)


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


def _plain(value):
    """Recursively: datetimes/dates → ISO strings, Decimals → strings, False → None."""
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
    """Compact JSON bytes of a response (Decimals as strings, datetimes ISO)."""
    return json.dumps(_plain(obj), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
