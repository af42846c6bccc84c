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


def test_nexacloud_bills_take_the_plan_price_of_subscriptions_active_in_the_period():
    from datetime import date, datetime, timezone

    from core.reconcile import nexacloud_bills

    def at(*args):
        return datetime(*args, tzinfo=timezone.utc)

    plans = [{"id": 1, "code": "pro", "price_cents": 4900, "currency": "cad", "interval": "month"},
             {"id": 2, "code": "pro_y", "price_cents": 49000, "currency": "CAD", "interval": "year"}]
    subs = [
        {"id": "a", "user_id": "u1", "plan_id": 1, "status": "active", "created_at": at(2026, 1, 1)},
        {"id": "b", "user_id": "u2", "plan_id": 1, "status": "canceled", "created_at": at(2026, 1, 1),
         "canceled_at": at(2026, 10, 15)},
        {"id": "c", "user_id": "u3", "plan_id": 1, "status": "canceled", "created_at": at(2026, 1, 1),
         "canceled_at": at(2026, 9, 1)},
        {"id": "d", "user_id": "u4", "plan_id": 2, "status": "active", "created_at": at(2026, 1, 1),
         "current_period_start": at(2026, 10, 3)},
        {"id": "e", "user_id": "u5", "plan_id": 2, "status": "active", "created_at": at(2026, 1, 1),
         "current_period_start": at(2026, 3, 3)},
        {"id": "f", "user_id": "u6", "plan_id": 1, "status": "active", "created_at": at(2026, 11, 2)},
        {"id": "g", "user_id": "u7", "plan_id": 1, "status": "incomplete_expired", "created_at": at(2026, 1, 1)},
        {"id": "h", "user_id": "u8", "plan_id": 99, "status": "active", "created_at": at(2026, 1, 1)},
    ]
    bills = nexacloud_bills(plans, subs, date(2026, 10, 1), date(2026, 11, 1))
    assert {key: (b.plan_code, b.amount, b.currency) for key, b in bills.items()} == {
        "a": ("pro", D("49"), "CAD"), "b": ("pro", D("49"), "CAD"),
        "d": ("pro_y", D("490"), "CAD"), "e": ("pro_y", D("0"), "CAD")}
