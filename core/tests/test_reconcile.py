from decimal import Decimal

import pytest

from core.reconcile import Bill, reconcile, summarise

D = Decimal


def bill(base="10.00", usage=None, plan="pro", currency="CAD", tax=None, partner="p1"):
    return Bill(partner_key=partner, currency=currency, plan_code=plan, base_fee=D(base),
                usage={k: D(v) for k, v in (usage or {}).items()}, tax=None if tax is None else D(tax))


@pytest.mark.parametrize("app_base, status", [
    ("10.00", "match"), ("10.01", "match"), ("9.99", "match"), ("10.02", "mismatch"), ("9.98", "mismatch"),
])
def test_tolerance_edges(app_base, status):
    [row] = reconcile({"s1": bill()}, {"s1": bill(app_base)})
    assert row["status"] == status
    assert row["delta"] == D("10.00") - D(app_base)


@pytest.mark.parametrize("odoo, app, explanation", [
    (bill(plan="pro"), bill(plan="basic"), "plan differs: Odoo pro, app basic"),
    (bill("49.00"), bill("39.00"), "base fee differs: Odoo 49.00, app 39.00"),
    (bill(usage={"bandwidth_gb": "7.50", "vcpu": "1"}), bill(usage={"bandwidth_gb": "5.00", "vcpu": "1"}),
     "usage bandwidth_gb differs: Odoo 7.50, app 5.00"),
    (bill(currency="CAD"), bill(currency="USD"), "currency differs: Odoo CAD, app USD"),
    (bill(plan="pro", usage={"disk_gb": "2"}), bill(plan="max", usage={}),
     "plan differs: Odoo pro, app max; usage disk_gb differs: Odoo 2.00, app 0.00"),
])
def test_explanations(odoo, app, explanation):
    [row] = reconcile({"s": odoo}, {"s": app})
    assert (row["status"], row["explanation"]) == ("mismatch", explanation)


def test_tax_difference_is_explained_but_does_not_break_a_match():
    [row] = reconcile({"s": bill(tax="1.30")}, {"s": bill(tax="1.20")})
    assert row["status"] == "match"
    assert row["explanation"] == "tax differs: Odoo 1.30, app 1.20"
    assert row["odoo_amount_incl_tax"] == D("11.30")


def test_missing_sides_and_summary():
    rows = reconcile({"a": bill(), "b": bill(partner="p2")}, {"a": bill(), "c": bill("5", partner="p3")})
    by_key = {row["subscription_key"]: row for row in rows}
    assert [r["subscription_key"] for r in rows] == ["a", "b", "c"]
    assert (by_key["b"]["status"], by_key["b"]["app_amount"], by_key["b"]["delta"]) == ("missing_in_app", 0, D(10))
    assert (by_key["c"]["status"], by_key["c"]["odoo_amount"], by_key["c"]["partner_key"]) == ("missing_in_odoo", 0, "p3")
    summary = summarise(rows)
    assert summary["counts"] == {"match": 1, "missing_in_app": 1, "missing_in_odoo": 1}
    assert (summary["total_abs_delta"], summary["total_odoo"], summary["total_app"]) == (D(15), D(20), D(15))


def test_custom_tolerance():
    assert reconcile({"s": bill("10")}, {"s": bill("10.40")}, tolerance="0.50")[0]["status"] == "match"
