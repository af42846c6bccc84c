import json
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from core import errors, lago

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)


def error_of(call, *args, **kwargs):
    with pytest.raises(lago.LagoError) as caught:
        call(*args, **kwargs)
    return caught.value.status, caught.value.body


@pytest.mark.parametrize("builder, args, status, body", [
    (lago.unauthorized, (), 401, {"status": 401, "error": "Unauthorized"}),
    (lago.not_found, ("customer",), 404, {"status": 404, "error": "Not Found", "code": "customer_not_found"}),
    (lago.method_not_allowed, ("no_active_subscription",), 405,
     {"status": 405, "error": "Method Not Allowed", "code": "no_active_subscription"}),
    (lago.validation, ({"email": ["value_is_invalid"]},), 422,
     {"status": 422, "error": "Unprocessable Entity", "code": "validation_errors",
      "error_details": {"email": ["value_is_invalid"]}}),
    (lago.forbidden, ("write_action_not_allowed_for_customer",), 403,
     {"status": 403, "error": "Forbidden", "code": "write_action_not_allowed_for_customer"}),
])
def test_error_envelopes_are_lagos(builder, args, status, body):
    error = builder(*args)
    assert (error.status, error.body) == (status, body)


@pytest.mark.parametrize("raw, status", [
    (b"", 400), (b"{", 400), (b"[]", 400), (b'"x"', 400), (b"\xff", 400), (b"NaN", 400),
    (b'{"a": NaN}', 400), (b"[" * 900, 400), (b"{}" + b" " * 2000, 413),
])
def test_parse_json_rejects_garbage_with_4xx(raw, status):
    assert error_of(lago.parse_json, raw, max_bytes=1000)[0] == status


def test_parse_json_and_require_root():
    assert lago.parse_json(b'{"customer": {"external_id": "a"}}') == {"customer": {"external_id": "a"}}
    assert lago.require_root({"customer": {"external_id": "a"}}, "customer") == {"external_id": "a"}
    for payload in ({}, {"customer": "x"}, {"customer": {}}, {"customer": None}):
        status, body = error_of(lago.require_root, payload, "customer")
        assert (status, body["error"]) == (400, "BadRequest: param is missing or the value is empty or invalid: customer")


def test_validate_customer_keeps_present_keys_only():
    clean = lago.validate_customer({"external_id": " c1 ", "email": None, "country": "ca", "currency": "cad",
                                    "unknown": {"x": 1}, "metadata": [{"key": "k", "value": "v"}]})
    assert clean == {"external_id": "c1", "email": None, "country": "CA", "currency": "CAD",
                     "metadata": [{"key": "k", "value": "v"}]}


@pytest.mark.parametrize("payload, details", [
    ({}, {"external_id": ["value_is_mandatory"]}),
    ({"external_id": "  "}, {"external_id": ["value_is_mandatory"]}),
    ({"external_id": 5}, {"external_id": ["value_is_invalid"]}),
    ({"external_id": "a", "currency": "dollars"}, {"currency": ["value_is_invalid"]}),
    ({"external_id": "a", "customer_type": "alien"}, {"customer_type": ["value_is_invalid"]}),
    ({"external_id": "a", "net_payment_term": -1}, {"net_payment_term": ["value_is_invalid"]}),
    ({"external_id": "a", "net_payment_term": True}, {"net_payment_term": ["value_is_invalid"]}),
    ({"external_id": "a", "metadata": "x"}, {"metadata": ["value_is_invalid"]}),
    ({"external_id": "x" * 300}, {"external_id": ["value_is_invalid"]}),
    # a website Odoo cannot parse (res.partner._clean_website raised: a 500)
    ({"external_id": "a", "url": "http://["}, {"url": ["value_is_invalid"]}),
    ({"external_id": "a", "url": "https://[::1/x"}, {"url": ["value_is_invalid"]}),
    ({"external_id": "a", "url": "shop]example.com"}, {"url": ["value_is_invalid"]}),
])
def test_validate_customer_errors(payload, details):
    assert error_of(lago.validate_customer, payload) == (422, lago.validation(details).body)


def test_validate_customer_keeps_ordinary_websites():
    for url in ("https://maple.example/shop?x=[1]", "www.maple.example", "http://[2001:db8::1]:8080/", "maple.example"):
        assert lago.validate_customer({"external_id": "a", "url": url})["url"] == url


def test_validate_subscription():
    clean = lago.validate_subscription_create({"external_customer_id": "c", "plan_code": "pro", "external_id": "s",
                                               "subscription_at": "2026-11-01T05:00:00-05:00"})
    assert clean["subscription_at"] == datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
    _status, body = error_of(lago.validate_subscription_create,
                             {"plan_code": "pro", "external_id": "s", "external_customer_id": "c", "ending_at": "soon"})
    assert body["error_details"] == {"ending_at": ["invalid_date"]}


@pytest.mark.parametrize("timestamp, expected", [
    (None, NOW),
    (1651240791, datetime(2022, 4, 29, 13, 59, 51, tzinfo=timezone.utc)),
    ("1651240791.123", datetime(2022, 4, 29, 13, 59, 51, 123000, tzinfo=timezone.utc)),
    (1651240791.5, datetime(2022, 4, 29, 13, 59, 51, 500000, tzinfo=timezone.utc)),
])
def test_event_timestamps(timestamp, expected):
    clean = lago.validate_event({"transaction_id": "t", "external_subscription_id": "s", "code": "c",
                                 "timestamp": timestamp, "properties": None}, NOW)
    assert clean["timestamp"] == expected
    assert clean["properties"] == {}


@pytest.mark.parametrize("timestamp", ["2022-04-29T13:59:51Z", True, "12abc", -5, "1e9", {"x": 1}])
def test_bad_event_timestamps(timestamp):
    _status, body = error_of(lago.validate_event, {"transaction_id": "t", "external_subscription_id": "s",
                                                   "code": "c", "timestamp": timestamp}, NOW)
    assert body["error_details"] == {"timestamp": ["invalid_format"]}


def test_event_fingerprint_tells_replay_from_conflict():
    base = {"transaction_id": "t", "external_subscription_id": "s", "code": "c", "timestamp": 1, "properties": {"gb": 1}}
    first = lago.validate_event(base, NOW)
    assert lago.validate_event(dict(base), NOW)["fingerprint"] == first["fingerprint"]
    assert lago.validate_event(dict(base, properties={"gb": 2}), NOW)["fingerprint"] != first["fingerprint"]
    assert lago.validate_event(dict(base, precise_total_amount_cents="12.50"), NOW)["fingerprint"] == \
        lago.validate_event(dict(base, precise_total_amount_cents="12.5"), NOW)["fingerprint"]


def test_batch_rules():
    event = {"transaction_id": "t", "external_subscription_id": "s", "code": "c", "timestamp": 1}
    assert error_of(lago.validate_batch, {"events": []}, NOW)[1]["error_details"] == {"events": ["no_events"]}
    assert error_of(lago.validate_batch, {"events": [event] * 101}, NOW)[1]["error_details"] == \
        {"events": ["too_many_events"]}
    assert error_of(lago.validate_batch, {"events": "x"}, NOW)[0] == 400
    assert error_of(lago.validate_batch, {"events": [event, {"code": "c"}, 5]}, NOW)[1]["error_details"] == {
        "1": {"transaction_id": ["value_is_mandatory"], "external_subscription_id": ["value_is_mandatory"]},
        "2": {"event": ["value_is_invalid"]}}
    conflict = dict(event, properties={"v": 2})
    assert error_of(lago.validate_batch, {"events": [event, conflict]}, NOW)[1]["error_details"] == \
        {"1": {"transaction_id": ["value_already_exist"]}}
    assert len(lago.validate_batch({"events": [event, dict(event)]}, NOW)) == 2  # identical replay


@pytest.mark.parametrize("query, expected", [
    ({}, (1, 100)), ({"page": ["2"], "per_page": ["20"]}, (2, 20)), ({"per_page": "5000"}, (1, 1000)),
])
def test_pagination(query, expected):
    assert lago.parse_pagination(query) == expected


@pytest.mark.parametrize("query", [{"page": "0"}, {"page": "-1"}, {"per_page": "abc"}, {"page": ["1.5"]}])
def test_bad_pagination_is_422(query):
    assert error_of(lago.parse_pagination, query)[0] == 422


@pytest.mark.parametrize("page, per_page, total, expected", [
    (1, 100, 0, {"current_page": 0, "next_page": None, "prev_page": None, "total_pages": 0, "total_count": 0}),
    (1, 2, 5, {"current_page": 1, "next_page": 2, "prev_page": None, "total_pages": 3, "total_count": 5}),
    (3, 2, 5, {"current_page": 3, "next_page": None, "prev_page": 2, "total_pages": 3, "total_count": 5}),
])
def test_meta(page, per_page, total, expected):
    assert lago.meta(page, per_page, total) == expected


def test_serialisation_formats():
    event = lago.event({"lago_id": "1", "transaction_id": "t", "external_subscription_id": "s", "code": "c",
                        "timestamp": datetime(2026, 1, 2, 3, 4, 5, 678900), "created_at": datetime(2026, 1, 2),
                        "properties": {}, "precise_total_amount_cents": Decimal("12.50")})
    assert event["timestamp"] == "2026-01-02T03:04:05.678Z"
    assert event["created_at"] == "2026-01-02T00:00:00Z"
    assert event["precise_total_amount_cents"] == "12.5"
    usage = lago.customer_usage({"from_datetime": datetime(2026, 1, 1), "to_datetime": datetime(2026, 2, 1),
                                 "issuing_date": date(2026, 2, 1), "currency": "CAD", "amount_cents": 250,
                                 "taxes_amount_cents": 33, "total_amount_cents": 283,
                                 "charges_usage": [{"units": Decimal("150.000000"), "events_count": 1}]})
    assert usage["issuing_date"] == "2026-02-01"
    assert usage["charges_usage"][0]["units"] == "150"
    assert usage["charges_usage"][0]["total_aggregated_units"] == "150"
    assert usage["charges_usage"][0]["filters"] == []
    assert json.loads(lago.dumps({"a": Decimal("1.50"), "b": False})) == {"a": "1.5", "b": None}


CUSTOMER = {"lago_id": "1", "external_id": "c", "created_at": datetime(2026, 1, 1), "updated_at": datetime(2026, 1, 1),
            "name": "N", "applicable_timezone": None}
PLAN = {"lago_id": "1", "name": "Pro", "code": "pro", "created_at": datetime(2026, 1, 1), "interval": "monthly",
        "amount_cents": 4900, "amount_currency": "CAD", "charges": []}


def test_serialisers_satisfy_the_official_python_client():
    models = pytest.importorskip("lago_python_client.models")
    models.customer.CustomerResponse.parse_obj(lago.customer(CUSTOMER))
    models.plan.PlanResponse.parse_obj(lago.plan(PLAN))
    models.subscription.SubscriptionResponse.parse_obj(lago.subscription(
        {"lago_id": "1", "external_id": "s", "plan": PLAN, "started_at": datetime(2026, 1, 1)}))
    models.event.EventResponse.parse_obj(lago.event({"transaction_id": "t", "external_subscription_id": "s",
                                                     "code": "c", "timestamp": datetime(2026, 1, 1)}))
    models.billable_metric.BillableMetricResponse.parse_obj(lago.billable_metric(
        {"lago_id": "1", "name": "m", "code": "m", "created_at": datetime(2026, 1, 1)}))
    models.customer_usage.CustomerUsageResponse.parse_obj(lago.customer_usage({
        "from_datetime": datetime(2026, 1, 1), "to_datetime": datetime(2026, 2, 1), "issuing_date": date(2026, 2, 1),
        "currency": "CAD", "amount_cents": 0, "taxes_amount_cents": 0, "total_amount_cents": 0,
        "charges_usage": [{"units": 1, "events_count": 1, "amount_cents": 0, "amount_currency": "CAD",
                           "charge": {"lago_id": "1", "charge_model": "standard"},
                           "billable_metric": {"lago_id": "1", "name": "m", "code": "m", "aggregation_type": "sum_agg"}}]}))
    assert lago.customer(CUSTOMER)["applicable_timezone"] == "UTC"


def test_a_retried_event_without_timestamp_is_a_replay_not_a_conflict():
    event = {"transaction_id": "tx_retry", "external_subscription_id": "sub_1", "code": "calls"}
    first = lago.validate_event(dict(event), NOW)
    retried = lago.validate_event(dict(event), NOW + timedelta(seconds=30))
    assert first["fingerprint"] == retried["fingerprint"]
    assert first["timestamp"] != retried["timestamp"]
    stamped = lago.validate_event(dict(event, timestamp=int(NOW.timestamp())), NOW)
    assert stamped["fingerprint"] != first["fingerprint"]


def test_domain_errors_map_onto_lago_envelopes():
    assert lago.from_domain_error(errors.NotFound("plan")).body == {
        "status": 404, "error": "Not Found", "code": "plan_not_found"}
    assert lago.from_domain_error(errors.NotAllowed("no_active_subscription")).status == 405
    invalid = lago.from_domain_error(errors.Invalid({"external_id": ["value_already_exist"]}))
    assert (invalid.status, invalid.body["error_details"]) == (422, {"external_id": ["value_already_exist"]})


class _Query(dict):
    """A query string as the controller gets it (a multidict: name → list of values)."""

    def get(self, key, default=None):
        values = super().get(key)
        return values[0] if values else default

    def __getitem__(self, key):
        return super().__getitem__(key)[0]

    def getlist(self, key):
        return list(super().get(key, []))


def test_query_strings_become_plain_values_for_the_models():
    query = _Query({"statuses[]": ["finalized", "voided"], "payment_status": ["pending"],
                    "issuing_date_from": ["2025-02-01"]})
    assert lago.invoice_filters(query) == {
        "statuses": ["finalized", "voided"], "payment_statuses": ["pending"],
        "issuing_date_from": date(2025, 2, 1), "issuing_date_to": None}
    with pytest.raises(lago.LagoError) as bad_date:
        lago.invoice_filters(_Query({"issuing_date_to": ["02/2025"]}))
    assert bad_date.value.body["error_details"] == {"issuing_date_to": ["invalid_date"]}
    assert lago.parse_int_param(None, "periods_count") is None
    assert lago.parse_int_param(" 3 ", "periods_count") == 3
    for junk in ("0", "-1", "two", "1.5"):
        with pytest.raises(lago.LagoError):
            lago.parse_int_param(junk, "periods_count")
