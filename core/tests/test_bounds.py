"""Hostile input is bounded before anything converts it (issue 14 §3), and usage deltas merge."""
import time
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from core import aggregation, lago, money


def error_of(func, *args, **kwargs):
    with pytest.raises(lago.LagoError) as caught:
        func(*args, **kwargs)
    return caught.value.status, caught.value.body.get("error_details")


@pytest.mark.parametrize("value, expected", [
    (1, Decimal(1)), ("12.5", Decimal("12.5")), (" -3 ", Decimal(-3)), (0.30000000000000004, Decimal("0.30000000000000004")),
    ("1e5", Decimal("1e5")), (999_999_999_999_999, Decimal(999_999_999_999_999)), ("0e-999999999", Decimal(0)),
    ("1.50000000000000000000000000", Decimal("1.5")), (Decimal("-2.5e-7"), Decimal("-2.5e-7")),
])
def test_parse_bounded_accepts(value, expected):
    assert money.parse_bounded(value) == expected


@pytest.mark.parametrize("value", [
    10 ** 15, -(10 ** 15), "1e15", "1e999999999", "1.5e400", "-1e-400", "0." + "1" * 21, "9" * 41, 1e300,
    Decimal("1e999999999"),
])
def test_parse_bounded_rejects_out_of_range(value):
    with pytest.raises(money.OutOfRange):
        money.parse_bounded(value)


@pytest.mark.parametrize("value", [None, True, "abc", "1_000", "NaN", "inf", float("nan"), [], {}, "1e", " "])
def test_parse_bounded_rejects_non_numbers(value):
    with pytest.raises(ValueError) as caught:
        money.parse_bounded(value)
    assert not isinstance(caught.value, money.OutOfRange)


def test_huge_literals_cost_nothing():
    started = time.monotonic()
    for raw in (b'{"event": {"properties": {"n": 1e10000000}}}', b'{"n": ' + b"9" * 900_000 + b"}",
                b'{"n": "' + b"1" * 900_000 + b'"}'):
        with pytest.raises(lago.LagoError):
            payload = lago.parse_json(raw)
            lago.validate_event(payload.get("event", {"n": payload["n"]}), now=datetime.now(timezone.utc))
    assert time.monotonic() - started < 1.0


@pytest.mark.parametrize("raw, details", [
    (b'{"event": {"properties": {"n": 1e10000000}}}', {"properties": ["value_is_out_of_range"]}),
    (b'{"event": {"properties": {"n": 12345678901234567890}}}', {"properties": ["value_is_out_of_range"]}),
    (b'{"events": [{"a": 1}, {"properties": {"n": 1.5e400}}]}', {"1": {"properties": ["value_is_out_of_range"]}}),
    (b'{"event": {"transaction_id": "a\\u0000b"}}', {"transaction_id": ["value_is_invalid"]}),
    (b'{"event": {"properties": {"k\\u0000": 1}}}', {"properties": ["value_is_invalid"]}),
    (b'{"event": {"\\ud800": 1}}', {"\\ud800": ["value_is_invalid"]}),
    (b'{"customer": {"name": "\\udfff"}}', {"name": ["value_is_invalid"]}),
    # a bad key whose value is an object or a list (finding 4: these keys were not checked)
    (b'{"event": {"properties": {"a\\u0000b": {"x": 1}}}}', {"properties": ["value_is_invalid"]}),
    (b'{"event": {"properties": {"\\ud800": [1, 2]}}}', {"properties": ["value_is_invalid"]}),
    (b'{"events": [{"a": 1}, {"properties": {"k": {"\\udc00": {}}}}]}', {"1": {"properties": ["value_is_invalid"]}}),
    (b'{"\\u0000": {"a": 1}}', {"\\x00": ["value_is_invalid"]}),
    (b'{"app_bills": [{"base_fee_cents": ' + b"1" * 401 + b'}]}', {"0": {"base_fee_cents": ["value_is_out_of_range"]}}),
])
def test_parse_json_reports_each_bound_by_field(raw, details):
    assert error_of(lago.parse_json, raw) == (422, details)


def test_depth_is_bounded_and_very_deep_json_is_a_400():
    nested = b'{"event": {"properties": ' + b'{"a": ' * 30 + b"1" + b"}" * 30 + b"}}"
    assert error_of(lago.parse_json, nested) == (422, {"properties": ["too_deep"]})
    ok = b'{"event": {"properties": ' + b'{"a": ' * 10 + b"1" + b"}" * 10 + b"}}"
    assert lago.parse_json(ok)["event"]["properties"]["a"]["a"]
    with pytest.raises(lago.LagoError) as caught:
        lago.parse_json(b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}")
    assert caught.value.status == 400


def test_ordinary_numbers_keep_their_types():
    payload = lago.parse_json(b'{"a": 3, "b": 2.5, "c": -1e-7, "d": 999999999999999}')
    assert payload == {"a": 3, "b": Decimal("2.5"), "c": Decimal("-1e-7"), "d": 999999999999999}
    assert isinstance(payload["a"], int)


NOW = datetime(2026, 11, 18, tzinfo=timezone.utc)


@pytest.mark.parametrize("event, details", [
    ({"timestamp": 253402300000}, {"timestamp": ["invalid_format"]}),
    ({"timestamp": 4102444800}, {"timestamp": ["invalid_format"]}),  # 2100-01-01
    ({"timestamp": "1e30"}, {"timestamp": ["invalid_format"]}),
    ({"precise_total_amount_cents": "1e999999999"}, {"precise_total_amount_cents": ["value_is_out_of_range"]}),
    ({"precise_total_amount_cents": "lots"}, {"precise_total_amount_cents": ["value_is_invalid"]}),
])
def test_event_bounds(event, details):
    base = {"transaction_id": "t", "external_subscription_id": "s", "code": "c"}
    assert error_of(lago.validate_event, dict(base, **event), now=NOW) == (422, details)


@pytest.mark.parametrize("key, value", [
    ("subscription_at", "9999-12-31T00:00:00Z"), ("ending_at", "2100-01-01T00:00:00Z"),
    ("subscription_at", "0001-01-01T00:00:00+01:00"), ("subscription_at", "1969-12-31T23:59:59Z"),
])
def test_subscription_dates_are_bounded(key, value):
    payload = {"external_customer_id": "c", "plan_code": "p", "external_id": "s", key: value}
    assert error_of(lago.validate_subscription_create, payload) == (422, {key: ["invalid_date"]})


def test_unknown_timezone_is_invalid():
    zones = {"America/Toronto", "UTC"}
    assert lago.validate_customer({"external_id": "a", "timezone": "America/Toronto"}, zones)["timezone"] == \
        "America/Toronto"
    assert error_of(lago.validate_customer, {"external_id": "a", "timezone": "Mars/Base"}, zones) == \
        (422, {"timezone": ["value_is_invalid"]})


@pytest.mark.parametrize("query", [{"page": ["²"]}, {"page": [str(10 ** 22)]}, {"per_page": ["²"]},
                                   {"page": ["0"]}, {"page": ["-1"]}, {"page": [str(lago.MAX_PAGE + 1)]}])
def test_pagination_bounds(query):
    assert error_of(lago.parse_pagination, query)[0] == 422


def test_pagination_accepts_and_clamps():
    assert lago.parse_pagination({"page": ["3"], "per_page": ["5000"]}) == (3, lago.MAX_PER_PAGE)
    assert lago.parse_pagination({}) == (1, lago.DEFAULT_PER_PAGE)
    assert lago.parse_int_param("12", "periods_count") == 12
    assert error_of(lago.parse_int_param, "²", "periods_count") == (422, {"periods_count": ["value_is_invalid"]})


def test_record_ids_and_text_params():
    assert lago.parse_record_id("42") == 42
    for bad in ("²", "0", "-1", "9" * 30, "1e3", "", None):
        assert lago.parse_record_id(bad) is None
    lago.check_text_params({"search_term": ["ok"], "external_id": "fine"})
    assert error_of(lago.check_text_params, {"search_term": ["a\x00b"]}) == (422, {"search_term": ["value_is_invalid"]})
    assert error_of(lago.check_text_params, {"external_id": "x" * 300}, kind="path") == \
        (422, {"external_id": ["value_is_invalid"]})


BILL = {"external_subscription_id": "s1", "period_start": "2026-11-01", "period_end": "2026-12-01"}


def test_app_bills_are_typed_and_bounded():
    clean = lago.validate_app_bills({"app_bills": [dict(BILL, base_fee_cents=4900, usage={"gb": 250}, currency="cad")]})
    assert clean == [dict(BILL, base_fee_cents=4900, usage={"gb": 250}, currency="CAD")]
    cases = [
        (dict(BILL, base_fee_cents=10 ** 14), {"0": {"base_fee_cents": ["value_is_out_of_range"]}}),
        (dict(BILL, tax_cents="12"), {"0": {"tax_cents": ["value_is_invalid"]}}),
        (dict(BILL, usage={"gb": 10 ** 14}), {"0": {"usage": ["value_is_out_of_range"]}}),
        (dict(BILL, usage={"gb": "1"}), {"0": {"usage": ["value_is_invalid"]}}),
        (dict(BILL, usage=[1]), {"0": {"usage": ["value_is_invalid"]}}),
        (dict(BILL, period_start="9999-12-31"), {"0": {"period_start": ["invalid_date"]}}),
        (dict(BILL, period_end="2026-10-01"), {"0": {"period_end": ["value_is_invalid"]}}),
        (dict(BILL, currency={"a": 1}), {"0": {"currency": ["value_is_invalid"]}}),
        (dict(BILL, external_customer_id=["x"]), {"0": {"external_customer_id": ["value_is_invalid"]}}),
        ("bill", {"0": {"app_bill": ["value_is_invalid"]}}),
    ]
    for bill, details in cases:
        assert error_of(lago.validate_app_bills, {"app_bills": [bill]}) == (422, details), bill
    assert error_of(lago.validate_app_bills, {"app_bills": [BILL] * (lago.MAX_APP_BILLS + 1)}) == \
        (422, {"app_bills": ["too_many_app_bills"]})
    assert error_of(lago.validate_app_bills, {"app_bills": []}) == (422, {"app_bills": ["value_is_mandatory"]})


def test_a_number_out_of_range_in_a_property_is_not_rated():
    with pytest.raises(money.OutOfRange):
        aggregation.property_value("sum", {"n": "1e999999999"}, "n")
    assert aggregation.property_value("sum", {"n": "abc"}, "n") is None
    result = aggregation.aggregate("sum", [{"timestamp": 1, "properties": {"n": "1e999999999"}},
                                           {"timestamp": 2, "properties": {"n": 2}}], "n")
    assert (result.units, result.events_count) == (2, 1)


T1, T2 = datetime(2026, 11, 1), datetime(2026, 11, 2)


@pytest.mark.parametrize("kind, current, later, expected", [
    ("sum", (Decimal(5), 2, T1), (Decimal(3), 1, T2), (Decimal(8), 3, T2)),
    ("count", (Decimal(2), 2, T2), (Decimal(1), 1, T1), (Decimal(3), 3, T2)),
    ("max", (Decimal(5), 2, T1), (Decimal(3), 1, T2), (Decimal(5), 3, T2)),
    ("max", (Decimal(-5), 1, T1), (Decimal(-3), 1, T2), (Decimal(-3), 2, T2)),
    ("latest", (Decimal(5), 2, T2), (Decimal(3), 1, T1), (Decimal(5), 3, T2)),
    ("latest", (Decimal(5), 2, T1), (Decimal(3), 1, T1), (Decimal(3), 3, T1)),  # tie: the later wins
    ("latest", (Decimal(0), 0, None), (Decimal(3), 1, T1), (Decimal(3), 1, T1)),
    ("unique_count", (Decimal(4), 4, T1), (Decimal(1), 2, T2), (Decimal(4), 6, T2)),
])
def test_merge_folds_a_delta_as_the_events_would(kind, current, later, expected):
    assert aggregation.merge(kind, current, later) == expected


def test_merging_deltas_equals_aggregating_all_events():
    events = [{"timestamp": (datetime(2026, 11, 1 + i % 5), i), "properties": {"n": (i * 7) % 11 - 3}}
              for i in range(40)]
    for kind in ("count", "sum", "max", "latest"):
        chunks = [events[i:i + 7] for i in range(0, len(events), 7)]
        first = aggregation.aggregate(kind, chunks[0], "n")
        total = (first.units, first.events_count, max(e["timestamp"] for e in chunks[0]))
        for chunk in chunks[1:]:
            part = aggregation.aggregate(kind, chunk, "n")
            total = aggregation.merge(kind, total, (part.units, part.events_count, max(e["timestamp"] for e in chunk)))
        whole = aggregation.aggregate(kind, events, "n")
        assert (total[0], total[1]) == (whole.units, whole.events_count), kind


def test_the_batch_answer_is_the_events_as_one_by_one():
    values = [{"lago_id": "1", "transaction_id": "t", "lago_customer_id": None, "code": "c",
               "timestamp": datetime(2026, 11, 18, 11, 6, 40, 250000), "precise_total_amount_cents": "12.50",
               "properties": {"gb": 1, "nested": {"a": [1, "x"]}}, "lago_subscription_id": "3",
               "external_subscription_id": "s", "created_at": datetime(2026, 11, 18, 12, 0), "status": "processed"},
              {"lago_id": "2", "transaction_id": "u", "lago_customer_id": False, "code": "c",
               "timestamp": datetime(2026, 11, 18), "precise_total_amount_cents": None, "properties": {},
               "lago_subscription_id": None, "external_subscription_id": "s", "created_at": None, "status": "late"}]
    assert lago.dumps(lago.events(values)) == lago.dumps({"events": [lago.event(v) for v in values]})
