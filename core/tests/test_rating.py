from decimal import Decimal

import pytest

from core import rating
from core.money import round_money

D = Decimal
GRADUATED_PLUS_ONE = {"graduated_ranges": [
    {"from_value": 0, "to_value": 100, "per_unit_amount": "0", "flat_amount": "0"},
    {"from_value": 101, "to_value": 1000, "per_unit_amount": "0.01", "flat_amount": "2"},
    {"from_value": 1001, "to_value": None, "per_unit_amount": "0.005", "flat_amount": "0"},
]}
GRADUATED_ADJACENT = {"graduated_ranges": [
    {"from_value": 0, "to_value": 100, "per_unit_amount": "0", "flat_amount": "0"},
    {"from_value": 100, "to_value": 1000, "per_unit_amount": "0.01", "flat_amount": "2"},
    {"from_value": 1000, "to_value": None, "per_unit_amount": "0.005", "flat_amount": "0"},
]}
VOLUME = {"volume_ranges": [
    {"from_value": 0, "to_value": 100, "per_unit_amount": "0.05", "flat_amount": "0"},
    {"from_value": 101, "to_value": None, "per_unit_amount": "0.03", "flat_amount": "10"},
]}
PACKAGE = {"amount": "5", "package_size": 1000, "free_units": 100}


@pytest.mark.parametrize("model, properties, units, kwargs, expected", [
    # Lago's worked examples (lago-api.md §3.2), to the cent.
    ("standard", {"amount": "0.02"}, 1500, {}, "30.00"),
    ("package", PACKAGE, 2350, {}, "15.00"),
    ("graduated", GRADUATED_PLUS_ONE, 1500, {}, "13.50"),
    ("volume", VOLUME, 1500, {}, "55.00"),
    ("percentage", {"rate": "2.5", "fixed_amount": "0.30"}, 600, {"events_count": 3}, "15.90"),
])
def test_lago_worked_examples(model, properties, units, kwargs, expected):
    assert rating.rate(model, properties, units, **kwargs).amount == D(expected)


@pytest.mark.parametrize("units, expected", [
    (0, "0.00"), (100, "0.00"), (100.5, "0.03"), (101, "0.05"), (150, "2.50"), ("1000000000000", "49999999995.00"),
])
def test_included_quota_is_consumed_first(units, expected):
    result = rating.rate("standard", {"amount": "0.05"}, units, included_units=100)
    assert result.amount == D(expected)
    assert result.billable_units == max(D(str(units)) - 100, D(0))


def test_fractional_units_are_exact():
    result = rating.rate("standard", {"amount": "0.1"}, "0.000001")
    assert result.precise_amount == D("0.0000001")
    assert (result.amount, result.amount_minor) == (D("0.00"), 0)
    assert rating.rate("standard", {"amount": "0.125"}, 1).amount == D("0.13"), "half up"


@pytest.mark.parametrize("units, expected", [
    (0, "0"), (1, "0"), (100, "0"), (101, "5"), (1100, "5"), (1101, "10"),
])
def test_package_blocks_start_after_free_units(units, expected):
    assert rating.rate("package", PACKAGE, units).amount == D(expected)


@pytest.mark.parametrize("properties", [GRADUATED_PLUS_ONE, GRADUATED_ADJACENT])
@pytest.mark.parametrize("units, expected", [
    (0, "0"), (100, "0"), (101, "2.01"), (1000, "11.00"), (1001, "11.005"), (1500, "13.50"),
])
def test_graduated_tier_edges_in_both_styles(properties, units, expected):
    result = rating.rate("graduated", properties, units)
    assert result.amount == round_money(D(expected))


def test_graduated_first_tier_flat_fee_applies_at_zero():
    properties = {"graduated_ranges": [
        {"from_value": 0, "to_value": 10, "per_unit_amount": "1", "flat_amount": "3"},
        {"from_value": 10, "to_value": None, "per_unit_amount": "0.5", "flat_amount": "1"}]}
    assert rating.rate("graduated", properties, 0).amount == D("3.00")
    assert rating.rate("graduated", properties, 10).amount == D("13.00")
    assert rating.rate("graduated", properties, 12).amount == D("15.00")
    assert [tier["units"] for tier in rating.rate("graduated", properties, 12).details] == [10, 2]


@pytest.mark.parametrize("units, expected", [(0, "0"), (1, "0.05"), (100, "5.00"), (101, "13.03"), (100.5, "13.015")])
def test_volume_uses_one_tier_for_all_units(units, expected):
    assert rating.rate("volume", VOLUME, units).amount == round_money(D(expected))


def test_percentage_free_units_and_per_transaction_clamps():
    properties = {"rate": "2.5", "fixed_amount": "0.30", "free_units_per_events": 1}
    # First event (100) is free: 500 × 2.5 % + 2 × 0.30
    assert rating.rate("percentage", properties, 600, events_count=3, event_amounts=[100, 200, 300]).amount == D("13.10")
    free_total = {"rate": "2.5", "free_units_per_total_aggregation": "150"}
    assert rating.rate("percentage", free_total, 600, events_count=3).amount == D("11.25")
    clamped = {"rate": "10", "per_transaction_min_amount": "1", "per_transaction_max_amount": "15"}
    # fees 0.5 → 1, 20 → 15, 100 → 15
    assert rating.rate("percentage", clamped, 1205, events_count=3, event_amounts=[5, 200, 1000]).amount == D("31.00")


@pytest.mark.parametrize("model, properties, errors", [
    ("standard", {}, {"amount": ["value_is_mandatory"]}),
    ("standard", {"amount": "abc"}, {"amount": ["value_is_invalid"]}),
    ("standard", {"amount": "-1"}, {"amount": ["value_is_invalid"]}),
    ("package", {"amount": "1", "package_size": 0}, {"package_size": ["value_is_invalid"]}),
    ("package", {"amount": "1", "package_size": "2.5"}, {"package_size": ["value_is_invalid"]}),
    ("graduated", {"graduated_ranges": []}, {"graduated_ranges": ["invalid_graduated_ranges"]}),
    ("graduated", {"graduated_ranges": [{"from_value": 5, "to_value": None}]},
     {"graduated_ranges": ["invalid_graduated_ranges"]}),
    ("graduated", {"graduated_ranges": [{"from_value": 0, "to_value": 10}, {"from_value": 12, "to_value": None}]},
     {"graduated_ranges": ["invalid_graduated_ranges"]}),
    ("graduated", {"graduated_ranges": [{"from_value": 0, "to_value": 10}]},
     {"graduated_ranges": ["invalid_graduated_ranges"]}),
    ("volume", {"volume_ranges": "x"}, {"volume_ranges": ["invalid_volume_ranges"]}),
    ("percentage", {"rate": "1", "per_transaction_min_amount": "5", "per_transaction_max_amount": "1"},
     {"per_transaction_max_amount": ["value_is_invalid"]}),
    ("dynamic", {}, {"charge_model": ["value_is_invalid"]}),
])
def test_invalid_properties_are_reported(model, properties, errors):
    assert rating.validate_properties(model, properties) == errors
    with pytest.raises(ValueError):
        rating.rate(model, properties, 1)


@pytest.mark.parametrize("model, properties", [
    ("standard", {"amount": "0.02"}), ("package", PACKAGE), ("graduated", GRADUATED_PLUS_ONE),
    ("graduated", GRADUATED_ADJACENT), ("volume", VOLUME), ("percentage", {"rate": "2.5"}),
])
def test_valid_properties_pass(model, properties):
    assert rating.validate_properties(model, properties) == {}


def test_minor_units_follow_currency_decimals():
    assert rating.rate("standard", {"amount": "1.2345"}, 1, decimals=3).amount_minor == 1235
    assert rating.rate("standard", {"amount": "12"}, 1, decimals=0).amount_minor == 12
