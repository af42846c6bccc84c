from datetime import date, datetime, timezone
from decimal import Decimal

import pytest

from core import nexacloud
from core.nexacloud_sample import sid
from core.reconcile import (REASONS, REAL, TIMING, Bill, classify, nexacloud_bills, odoo_renewals, reconcile,
                            stripe_renewals, summarise)

D = Decimal
NOVEMBER = (date(2026, 11, 1), date(2026, 12, 1))
MONTH, YEAR = ("month", 1), ("year", 1)


def at(*args):
    return datetime(*args, tzinfo=timezone.utc)


def bill(base="10.00", usage=None, plan="pro", currency="CAD", tax=None, partner="p1", **facts):
    return Bill(partner_key=partner, currency=currency, plan_code=plan, base_fee=D(base),
                usage={k: D(v) for k, v in (usage or {}).items()}, tax=None if tax is None else D(tax), **facts)


# ---------------------------------------------------------------- how Stripe bills (the derivation)
@pytest.mark.parametrize("period, expected", [
    (NOVEMBER, [at(2026, 11, 3, 9)]),                       # current_period_start inside the period
    ((date(2026, 10, 1), date(2026, 11, 1)), [at(2026, 10, 3, 9)]),  # a whole interval before it
    ((date(2026, 12, 1), date(2027, 1, 1)), [at(2026, 12, 3, 9)]),   # current_period_end: the next renewal
    ((date(2027, 1, 1), date(2027, 2, 1)), []),              # nothing known after current_period_end
    ((date(2025, 12, 1), date(2026, 1, 1)), []),             # before the subscription existed
    ((date(2026, 1, 1), date(2026, 2, 1)), [at(2026, 1, 3, 9)]),     # its creation is its first renewal
    ((date(2026, 10, 1), date(2026, 12, 1)), [at(2026, 10, 3, 9), at(2026, 11, 3, 9)]),  # two months, two bills
])
def test_monthly_renewals_inside_and_outside_the_period(period, expected):
    assert list(stripe_renewals(*period, MONTH, created_at=at(2026, 1, 3, 9), current_period_start=at(2026, 11, 3, 9),
                                current_period_end=at(2026, 12, 3, 9))) == expected


def test_a_monthly_renewal_due_later_in_the_period_is_its_current_period_end():
    assert stripe_renewals(*NOVEMBER, MONTH, created_at=at(2026, 1, 25), current_period_start=at(2026, 10, 25),
                           current_period_end=at(2026, 11, 25)) == (at(2026, 11, 25),)


@pytest.mark.parametrize("start, end, expected", [
    (at(2025, 11, 25), at(2026, 11, 25), (at(2026, 11, 25),)),  # renews (current_period_end) in the period
    (at(2026, 11, 3), at(2027, 11, 3), (at(2026, 11, 3),)),     # its term starts in the period
    (at(2026, 3, 3), at(2027, 3, 3), ()),                       # no renewal this month
])
def test_yearly_renewals_follow_the_same_rule(start, end, expected):
    assert stripe_renewals(*NOVEMBER, YEAR, created_at=at(2024, 3, 3), current_period_start=start,
                           current_period_end=end) == expected


def test_yearly_renewal_a_whole_year_before_the_current_period():
    renewals = stripe_renewals(date(2025, 11, 1), date(2025, 12, 1), YEAR, created_at=at(2024, 11, 25),
                               current_period_start=at(2025, 11, 25), current_period_end=at(2026, 11, 25))
    assert renewals == (at(2025, 11, 25),)


@pytest.mark.parametrize("canceled_at, expected", [
    (at(2026, 11, 20), ()),                                     # canceled before its renewal: nothing
    (at(2026, 11, 26), (at(2026, 11, 25, 9),)),                 # after its renewal: billed
    (at(2026, 11, 25, 8), ()),                                  # the same day, before the renewal time
    (at(2026, 11, 25, 10), (at(2026, 11, 25, 9),)),             # the same day, after it
    (at(2026, 10, 2), ()),                                      # canceled before the period
])
def test_nothing_is_billed_after_canceled_at(canceled_at, expected):
    assert stripe_renewals(*NOVEMBER, MONTH, created_at=at(2026, 1, 25, 9), current_period_start=at(2026, 10, 25, 9),
                           current_period_end=at(2026, 11, 25, 9), canceled_at=canceled_at) == expected


def test_cancel_at_period_end_bills_no_renewal_there():
    args = dict(created_at=at(2026, 1, 25), current_period_start=at(2026, 10, 25), current_period_end=at(2026, 11, 25),
                cancel_at_period_end=True)
    assert stripe_renewals(*NOVEMBER, MONTH, **args) == ()
    assert stripe_renewals(date(2026, 10, 1), date(2026, 11, 1), MONTH, **args) == (at(2026, 10, 25),)


@pytest.mark.parametrize("status", ["incomplete", "incomplete_expired", " Incomplete "])
def test_incomplete_subscriptions_bill_nothing(status):
    assert stripe_renewals(*NOVEMBER, MONTH, created_at=at(2026, 11, 2), current_period_start=at(2026, 11, 2),
                           current_period_end=at(2026, 11, 16), status=status) == ()


TRIAL = dict(created_at=at(2026, 11, 2, 9), current_period_start=at(2026, 11, 2, 9), status="trialing")


@pytest.mark.parametrize("period, trial_end, expected", [
    (NOVEMBER, at(2026, 11, 16, 9), (at(2026, 11, 16, 9),)),   # the trial ends in the period: its first charge
    (NOVEMBER, at(2026, 12, 2, 9), ()),                        # a 30-day trial: nothing in its first month
    ((date(2026, 12, 1), date(2027, 1, 1)), at(2026, 12, 2, 9), (at(2026, 12, 2, 9),)),
    ((date(2026, 10, 1), date(2026, 11, 1)), at(2026, 11, 16, 9), ()),  # before the trial
])
def test_a_trial_bills_nothing_before_its_end_its_first_charge(period, trial_end, expected):
    """Stripe charges a trialing subscription first at current_period_end, the end of its trial; never
    at its start (current_period_start), nor a whole interval before the end."""
    assert stripe_renewals(*period, MONTH, current_period_end=trial_end, **TRIAL) == expected
    assert stripe_renewals(*period, YEAR, current_period_end=trial_end, **TRIAL) == expected
    assert stripe_renewals(*period, MONTH, current_period_end=trial_end, cancel_at_period_end=True, **TRIAL) == ()
    assert stripe_renewals(*period, MONTH, current_period_end=trial_end, canceled_at=at(2026, 11, 10),
                           **TRIAL) == ()


def test_a_trial_that_started_last_month_is_first_charged_this_month():
    assert stripe_renewals(*NOVEMBER, MONTH, created_at=at(2026, 10, 20), current_period_start=at(2026, 10, 20),
                           current_period_end=at(2026, 11, 3), status="trialing") == (at(2026, 11, 3),)


@pytest.mark.parametrize("status", ["active", "past_due", "unpaid", "paused", "canceled"])
def test_every_other_status_bills_its_renewals(status):
    assert stripe_renewals(*NOVEMBER, MONTH, created_at=at(2026, 1, 2), current_period_start=at(2026, 11, 2),
                           current_period_end=at(2026, 12, 2), status=status) == (at(2026, 11, 2),)


def test_the_anchor_day_is_kept_at_the_end_of_short_months():
    args = dict(created_at=at(2026, 1, 31), current_period_start=at(2026, 2, 28), current_period_end=at(2026, 3, 31))
    assert stripe_renewals(date(2026, 1, 1), date(2026, 2, 1), MONTH, **args) == (at(2026, 1, 31),)
    assert stripe_renewals(date(2026, 2, 1), date(2026, 3, 1), MONTH, **args) == (at(2026, 2, 28),)
    assert stripe_renewals(date(2026, 3, 1), date(2026, 4, 1), MONTH, **args) == (at(2026, 3, 31),)


def test_a_period_that_is_not_a_whole_interval_renews_at_both_ends():
    # after a trial that ended on Nov 10, Stripe moved the anchor: the renewal of Nov 10 and the next one
    args = dict(created_at=at(2026, 10, 27), current_period_start=at(2026, 11, 10), current_period_end=at(2026, 11, 24))
    assert stripe_renewals(*NOVEMBER, ("week", 2), **args) == (at(2026, 11, 10), at(2026, 11, 24))
    assert stripe_renewals(*NOVEMBER, None, **args) == (at(2026, 11, 10), at(2026, 11, 24))  # unknown interval


def test_odoo_renews_on_the_anniversaries_of_its_start_date_until_it_ends():
    assert odoo_renewals(date(2026, 1, 25), "month", 1, *NOVEMBER) == (date(2026, 11, 25),)
    assert odoo_renewals(date(2025, 11, 25), "year", 1, *NOVEMBER) == (date(2026, 11, 25),)
    assert odoo_renewals(date(2026, 3, 3), "year", 1, *NOVEMBER) == ()
    assert odoo_renewals(date(2026, 12, 3), "month", 1, *NOVEMBER) == ()           # starts after the period
    assert odoo_renewals(date(2026, 1, 25), "month", 1, *NOVEMBER, until=date(2026, 11, 25)) == ()  # end date
    assert odoo_renewals(date(2026, 1, 25), "month", 1, *NOVEMBER, until=at(2026, 11, 26)) == (date(2026, 11, 25),)


def test_odoo_renews_on_its_billing_grid_from_its_first_billed_day():
    """Odoo's periods are the grid through the Date of Next Invoice (``anchor``, at or before the start);
    it bills nothing before ``since``: its start, or the end of a trial."""
    # A trial from Nov 20 to Dec 4: the grid is the 4th, the first invoice on Dec 4.
    assert odoo_renewals(date(2026, 11, 4), "month", 1, *NOVEMBER, since=date(2026, 12, 4)) == ()
    assert odoo_renewals(date(2026, 11, 4), "month", 1, date(2026, 12, 1), date(2027, 1, 1),
                         since=date(2026, 12, 4)) == (date(2026, 12, 4),)
    # A 30-day trial on a monthly plan: its start (Nov 2) is on its grid, but not billed.
    assert odoo_renewals(date(2026, 11, 2), "month", 1, *NOVEMBER, since=date(2026, 12, 2)) == ()
    # Started on Oct 15 on a grid of the 1st (its next invoice on Nov 1): it renews on the 1st.
    assert odoo_renewals(date(2026, 10, 1), "month", 1, *NOVEMBER, since=date(2026, 10, 15)) == (date(2026, 11, 1),)
    assert odoo_renewals(date(2026, 10, 1), "month", 1, date(2026, 10, 1), date(2026, 11, 1),
                         since=date(2026, 10, 15)) == ()


# ---------------------------------------------------------------- NexaCloud rows → app bills
PLANS = [{"id": 1, "code": "pro", "name": "Pro", "price_cents": 4900, "currency": "cad", "interval": "month"},
         {"id": 2, "code": "pro_y", "name": "Pro yearly", "price_cents": 49000, "currency": "CAD", "interval": "year"},
         {"id": 3, "code": "odd", "name": "Odd", "price_cents": 1000, "currency": "CAD", "interval": "fortnight"}]


def sub(key, plan=1, status="active", user="u1", created=at(2025, 1, 3), start=at(2026, 11, 3), end=None,
        canceled=None, cancel_at_period_end=False):
    end = end or (start.replace(year=start.year + 1) if plan == 2 else
                  start.replace(month=start.month % 12 + 1, year=start.year + start.month // 12))
    return {"id": key, "user_id": user, "plan_id": plan, "status": status, "created_at": created,
            "current_period_start": start, "current_period_end": end, "canceled_at": canceled,
            "cancel_at_period_end": cancel_at_period_end}


def test_nexacloud_bills_charge_each_renewal_of_the_period_at_the_plan_price():
    subs = [
        sub("monthly"),
        sub("monthly-due-later", start=at(2026, 10, 25)),
        sub("canceled-after-renewal", status="canceled", canceled=at(2026, 11, 15)),
        sub("canceled-before-renewal", status="canceled", start=at(2026, 10, 25), canceled=at(2026, 11, 15)),
        sub("canceled-last-month", status="canceled", start=at(2026, 9, 3), canceled=at(2026, 10, 15)),
        sub("yearly-renews", plan=2, start=at(2025, 11, 20)),
        sub("yearly-not-this-month", plan=2, start=at(2026, 3, 3)),
        sub("trial", status="trialing", created=at(2026, 11, 2), start=at(2026, 11, 2), end=at(2026, 11, 16)),
        sub("long-trial", status="trialing", created=at(2026, 11, 2), start=at(2026, 11, 2), end=at(2026, 12, 2)),
        sub("incomplete", status="incomplete", created=at(2026, 11, 2), start=at(2026, 11, 2)),
        sub("expired", status="incomplete_expired", created=at(2026, 11, 2), start=at(2026, 11, 2)),
        sub("created-later", created=at(2026, 12, 2), start=at(2026, 12, 2)),
        sub("odd-interval", plan=3, start=at(2026, 11, 10), end=at(2026, 11, 24)),
    ]
    bills = nexacloud_bills(PLANS, subs, *NOVEMBER)
    assert {key: (b.plan_code, b.amount, b.currency, b.renewals) for key, b in bills.items()} == {
        "monthly": ("pro", D("49"), "CAD", (date(2026, 11, 3),)),
        "monthly-due-later": ("pro", D("49"), "CAD", (date(2026, 11, 25),)),
        "canceled-after-renewal": ("pro", D("49"), "CAD", (date(2026, 11, 3),)),
        "canceled-before-renewal": ("pro", D("0"), "CAD", ()),
        "yearly-renews": ("pro_y", D("490"), "CAD", (date(2026, 11, 20),)),
        "yearly-not-this-month": ("pro_y", D("0"), "CAD", ()),
        "trial": ("pro", D("49"), "CAD", (date(2026, 11, 16),)),   # its first charge, at the end of its trial
        "long-trial": ("pro", D("0"), "CAD", ()),
        "incomplete": ("pro", D("0"), "CAD", ()),
        "odd-interval": ("odd", D("20"), "CAD", (date(2026, 11, 10), date(2026, 11, 24))),
    }


def test_nexacloud_bills_say_why_the_importer_leaves_a_subscription_out():
    users = [{"id": "u1", "email": "a@example.com"}, {"id": "gone", "email": "g@example.com", "deleted_at": at(2026, 6, 1)},
             {"id": "bad", "email": "not-an-email"}]
    subs = [sub("kept"), sub("orphan", user="gone", status="past_due"), sub("bad-user", user="bad"),
            sub("bad-plan", plan=3), sub("canceled", status="canceled", canceled=at(2026, 11, 15))]
    bills = nexacloud_bills(PLANS, subs, *NOVEMBER, users=users, service_currency="CAD")
    assert {key: b.skipped for key, b in bills.items()} == {
        "kept": None,
        "orphan": ("user_deleted", "orphan: its user gone is soft-deleted"),
        "bad-user": ("parent_failed", "its user bad could not be imported (invalid e-mail address 'not-an-email')"),
        "bad-plan": ("parent_failed", "its plan 3 could not be imported (unknown billing interval 'fortnight')"),
        "canceled": ("canceled", "canceled in NexaCloud"),
    }


def test_nexacloud_bills_from_a_real_source_database(source_db):
    """The messy sample read through the read-only reader (timestamps as PostgreSQL returns them)."""
    with nexacloud.Source(source_db["ro"]) as source:
        bills = nexacloud_bills(list(source.rows("plans")), list(source.rows("subscriptions")), *NOVEMBER,
                                users=list(source.rows("users")), service_currency="CAD")
    assert {key: (b.amount, b.renewals, b.skipped and b.skipped[0]) for key, b in bills.items()} == {
        sid("s", 1): (D("19"), (date(2026, 11, 1),), None),
        sid("s", 2): (D("0"), (), None),                        # trialing until Dec 1: charged then
        sid("s", 3): (D("9"), (date(2026, 11, 1),), None),      # inactive plan, still billed
        sid("s", 4): (D("19"), (date(2026, 11, 1),), "user_deleted"),
        sid("s", 5): (D("25"), (date(2026, 11, 1),), None),     # USD plan
        sid("s", 7): (D("19"), (date(2026, 11, 1),), None),     # paused still bills
        sid("s", 8): (D("0"), (), "incomplete"),                # incomplete: not imported, nothing billed
        sid("s", 10): (D("19"), (date(2026, 11, 1),), "parent_failed"),
        sid("s", 11): (D("10"), (date(2026, 11, 1),), "parent_failed"),  # fortnightly: its known renewal
    }                                                           # 6 canceled in October, 9 incomplete_expired: none
    assert bills[sid("s", 5)].currency == "USD"


# ---------------------------------------------------------------- comparison: one reason per row
@pytest.mark.parametrize("app_base, status", [
    ("10.00", "match"), ("10.01", "match"), ("9.99", "match"), ("10.02", "mismatch"), ("9.98", "mismatch"),
])
def test_tolerance_edges(app_base, status):
    [row] = reconcile({"s1": bill()}, {"s1": bill(app_base)})
    assert row["status"] == status
    assert row["delta"] == D("10.00") - D(app_base)


def test_zero_bills_or_no_bill_on_either_side_are_matches():
    rows = reconcile({"a": bill("0"), "b": bill("0"), "c": bill("0", plan="other")},
                     {"a": bill("0"), "c": bill("0"), "d": bill("0", status="canceled", renewals=())})
    assert [(r["subscription_key"], r["status"], r["reason"]) for r in rows] == [
        ("a", "match", None), ("b", "match", None), ("c", "match", None), ("d", "match", None)]
    assert summarise(rows)["reasons"] == {}


@pytest.mark.parametrize("odoo, app, reason, explanation", [
    (bill(currency="CAD"), bill("25", currency="USD"), "currency",
     "Foreign currency: Odoo bills in CAD, the app in USD; the amounts cannot be compared."),
    (bill(plan="pro"), bill("20", plan="basic"), "plan_differs", "Plan differs: Odoo bills plan pro, the app basic."),
    (bill("49", renewals=(date(2026, 11, 3),), unit_price=D(49)), bill("39", renewals=(date(2026, 11, 3),),
                                                                       unit_price=D(39)),
     "price_differs", "Plan price differs: Odoo 49.00, the app 39.00 CAD per renewal."),
    (bill(usage={"bandwidth_gb": "7.50", "vcpu": "1", "disk_gb": "3"}),
     bill(usage={"bandwidth_gb": "5.00", "vcpu": "1"}), "usage_differs",
     "Usage differs, by charge: bandwidth_gb: Odoo 7.50, app 5.00; disk_gb: Odoo 3.00, app 0.00."),
    (bill(renewals=(date(2026, 11, 30),)), bill("0", renewals=()), "renewal_timing",
     "Renewal timing: Odoo renews on 2026-11-30, the app on none."),
    (bill("0", renewals=(), since=date(2026, 12, 3)), bill(renewals=(date(2026, 11, 3),)), "renewal_timing",
     "Renewal timing: Odoo renews on none, the app on 2026-11-03 (Odoo's copy starts on 2026-12-03, after the "
     "app's renewal of 2026-11-03)."),
    (bill(renewals=(date(2026, 11, 2),)), bill("0", renewals=(), status="trialing", period_end=date(2026, 12, 2)),
     "trial", "In trial in the app until 2026-12-02: Stripe bills nothing before the trial ends, Odoo's copy renews "
              "on 2026-11-02 (it does not know the trial)."),
    (bill(renewals=(date(2026, 11, 2),)), bill("0", renewals=(), status="incomplete"), "not_started",
     "Never started in the app (incomplete: its first payment did not go through), so Stripe bills nothing; "
     "Odoo's copy bills 10.00 CAD."),
    (bill(renewals=(date(2026, 11, 25),), status="active"),
     bill("0", renewals=(), status="canceled", canceled_at=at(2026, 11, 20)), "canceled_after_import",
     "Canceled in the app on 2026-11-20, after the import: Odoo's copy still renews on 2026-11-25. It stops when "
     "the subscription is terminated in Odoo."),
])
def test_each_difference_gets_one_reason_and_a_plain_explanation(odoo, app, reason, explanation):
    [row] = reconcile({"s": odoo}, {"s": app})
    assert (row["status"], row["reason"], row["explanation"].split(" Details: ")[0]) == ("mismatch", reason, explanation)
    assert row["kind"] == REASONS[reason][1]


def test_the_most_structural_cause_is_the_reason_and_the_details_list_every_difference():
    [row] = reconcile({"s": bill(plan="pro", usage={"disk_gb": "2"})}, {"s": bill(plan="max", usage={})})
    assert (row["reason"], row["explanation"]) == (
        "plan_differs", "Plan differs: Odoo bills plan pro, the app max. Details: plan differs: Odoo pro, app max; "
                        "usage disk_gb differs: Odoo 2.00, app 0.00.")


@pytest.mark.parametrize("app, linked, imported_at, reason, kind, explanation", [
    (bill("19", status="past_due", renewals=(date(2026, 11, 3),),
          skipped=("user_deleted", "orphan: its user u1 is soft-deleted")), None, None, "user_deleted", REAL,
     "Not imported: orphan: its user u1 is soft-deleted, but Stripe still bills this past_due subscription: the app "
     "bills 19.00 CAD (renewal of 2026-11-03); Odoo will never bill it."),
    (bill("19", status="canceled", renewals=(date(2026, 11, 3),), canceled_at=at(2026, 11, 20),
          skipped=("canceled", "canceled in NexaCloud")), None, None, "canceled_before_import", TIMING,
     "Not imported: canceled in the app on 2026-11-20, before the import; the app bills 19.00 CAD (renewal of "
     "2026-11-03) before the cancellation."),
    (bill("10", status="active", skipped=("parent_failed", "its plan 5 could not be imported (bad)")), None, None,
     "not_imported", REAL, "Not imported: its plan 5 could not be imported (bad); the app bills 10.00 CAD."),
    (bill("19", status="active", since=date(2026, 11, 20)), {"p1"}, at(2026, 11, 10), "new_since_import", TIMING,
     "Not imported yet: created in the app on 2026-11-20, after the last import (2026-11-10); the app bills "
     "19.00 CAD. Run the import again."),
    (bill("19", status="active", since=date(2026, 1, 2)), set(), at(2026, 11, 10), "no_account_link", REAL,
     "No account link: the app's customer p1 is unknown to Odoo; the app bills 19.00 CAD."),
    (bill("19", status="active", since=date(2026, 1, 2)), {"p1"}, at(2026, 11, 10), "not_imported", REAL,
     "Not imported: the import did not create it (see its reported rows); the app bills 19.00 CAD."),
    (bill("19"), None, None, "missing_in_odoo", REAL,
     "Billed by the app only: Odoo has no subscription or bill; the app bills 19.00 CAD."),
])
def test_bills_missing_in_odoo_are_explained_by_the_import(app, linked, imported_at, reason, kind, explanation):
    [row] = reconcile({}, {"s": app}, linked=linked, imported_at=imported_at)
    assert (row["status"], row["reason"], row["kind"], row["explanation"]) == (
        "missing_in_odoo", reason, kind, explanation)


def test_bills_missing_in_the_app():
    rows = reconcile({"a": bill(), "b": bill(linked=False)}, {})
    assert [(r["status"], r["reason"]) for r in rows] == [("missing_in_app", "missing_in_app"),
                                                          ("missing_in_app", "no_account_link")]


def test_a_side_that_cannot_be_computed_is_an_error_row_not_a_crash():
    from core.reconcile import error_bill
    rows = reconcile({"a": error_bill("p1", "CAD", "charge 7 has no price"), "b": bill()},
                     {"a": bill(), "b": bill()})
    assert [(r["status"], r["reason"], r["explanation"]) for r in rows] == [
        ("error", "error", "Odoo's bill could not be computed: charge 7 has no price."), ("match", None, "")]


def test_tax_difference_is_explained_but_does_not_break_a_match():
    [row] = reconcile({"s": bill(tax="1.30")}, {"s": bill(tax="1.20")})
    assert (row["status"], row["reason"]) == ("match", None)
    assert row["explanation"] == "tax differs: Odoo 1.30, app 1.20"
    assert row["odoo_amount_incl_tax"] == D("11.30")


def test_summary_counts_and_amounts_per_reason():
    rows = reconcile(
        {"a": bill(), "b": bill(partner="p2"), "c": bill("0", renewals=(), since=date(2026, 12, 1))},
        {"a": bill(), "d": bill("5", partner="p3", skipped=("user_deleted", "gone"), status="active"),
         "e": bill("7", partner="p4", skipped=("user_deleted", "gone"), status="unpaid"),
         "c": bill("19", renewals=(date(2026, 11, 3),))})
    summary = summarise(rows)
    assert summary["counts"] == {"match": 1, "missing_in_app": 1, "missing_in_odoo": 2, "mismatch": 1}
    assert summary["reasons"] == {
        ("missing_in_app", "CAD"): {"count": 1, "amount": D(10), "delta": D(10)},
        ("user_deleted", "CAD"): {"count": 2, "amount": D(12), "delta": D(-12)},
        ("renewal_timing", "CAD"): {"count": 1, "amount": D(19), "delta": D(-19)},
    }
    assert (summary["total_abs_delta"], summary["total_odoo"], summary["total_app"]) == (D(41), D(20), D(41))


def test_a_side_that_does_not_name_its_plan_is_not_compared_on_plan():
    assert reconcile({"s": bill(plan="pro")}, {"s": bill(plan=None)})[0]["status"] == "match"
    [row] = reconcile({"s": bill(plan="pro")}, {"s": bill("12", plan=None)})
    assert (row["status"], row["reason"]) == ("mismatch", "price_differs")


def test_small_differences_that_add_up_are_amounts_that_differ():
    [row] = reconcile({"s": bill(usage={"a": "1.00", "b": "1.00"})}, {"s": bill(usage={"a": "1.01", "b": "1.01"})})
    assert (row["status"], row["reason"], row["explanation"]) == (
        "mismatch", "amount_differs", "Amounts differ by -0.02 CAD.")


def test_custom_tolerance():
    assert reconcile({"s": bill("10")}, {"s": bill("10.40")}, tolerance="0.50")[0]["status"] == "match"


def test_every_reason_is_timing_or_real():
    assert {kind for _label, kind in REASONS.values()} == {TIMING, REAL}
    assert classify(None, bill("0")) == ("match", None, "")
