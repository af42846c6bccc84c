"""NexaCloud reader and planner against a real PostgreSQL database holding every messy case."""
from datetime import date
from decimal import Decimal

import psycopg2
import pytest
from psycopg2.extensions import make_dsn

from core import nexacloud
from core.nexacloud import FAIL, IMPORT, SKIP
from core.nexacloud_sample import LONG_COMPANY, sid


def admin_exec(source_db, sql):
    with psycopg2.connect(source_db["admin"]) as connection, connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


def snapshot(source_db):
    """Every row of the four tables, to prove the importer changed nothing."""
    with psycopg2.connect(source_db["admin"]) as connection, connection.cursor() as cursor:
        rows = {}
        for table in nexacloud.TABLES:
            cursor.execute(f"SELECT * FROM {table} ORDER BY id")
            rows[table] = cursor.fetchall()
    connection.close()
    return rows


# ---------------------------------------------------------------- DSN handling
def test_sqlalchemy_url_is_accepted_without_the_driver_suffix_and_with_a_note():
    dsn, notes = nexacloud.normalise_dsn(" postgresql+asyncpg://ro:pw@db.nexa:5432/nexacloud?ssl=require ")
    assert dsn == "postgresql://ro:pw@db.nexa:5432/nexacloud?sslmode=require"
    assert any("+asyncpg" in note for note in notes) and any("sslmode" in note for note in notes)
    assert nexacloud.normalise_dsn("host=db dbname=nexacloud") == ("host=db dbname=nexacloud", [])


def test_missing_dsn_is_a_readable_error():
    with pytest.raises(nexacloud.SourceError, match="fusion_billing.nexacloud_dsn"):
        nexacloud.normalise_dsn("  ")


@pytest.mark.parametrize("dsn", [
    "postgresql://ro:Sup3r%2Fsecret@db.nexa/nexacloud",
    "host=db.nexa user=ro password=Sup3r/secret dbname=nexacloud",
])
def test_redact_removes_the_password_in_any_spelling(dsn):
    text = f"failed for {dsn} with Sup3r/secret and Sup3r%2Fsecret"
    assert "Sup3r" not in nexacloud.redact(text, dsn)
    assert "Sup3r" not in nexacloud.describe(dsn)


# ---------------------------------------------------------------- connection and Test Connection
def test_unreachable_host_and_bad_password_are_explained_without_the_password(source_db):
    bad_password = make_dsn(source_db["ro"], password="wrong-pass-123")
    with pytest.raises(nexacloud.SourceError) as error:
        nexacloud.connect(bad_password)
    assert "bad user name or password" in str(error.value) and "wrong-pass-123" not in str(error.value)

    refused = make_dsn(source_db["ro"], port="1")
    report = nexacloud.test_connection(refused)
    assert not report["ok"] and "connection refused" in report["error"]
    assert source_db["password"] not in report["error"]

    no_db = make_dsn(source_db["ro"], dbname="no_such_db_here")
    assert "no such database" in nexacloud.test_connection(no_db)["error"]


def test_bad_host_is_explained():
    report = nexacloud.test_connection("host=no-such-host.invalid dbname=x user=y password=hunter22")
    assert "bad host" in report["error"] and "hunter22" not in report["error"]


def test_test_connection_reports_version_role_privileges_and_row_counts(source_db):
    report = nexacloud.test_connection(source_db["ro"])
    assert report["ok"], report
    assert report["server_version"] and report["role"] == source_db["role"]
    assert report["superuser"] is False and report["write_privileges"] == [] and report["warnings"] == []
    assert {t: v["rows"] for t, v in report["tables"].items()} == {
        "users": 9, "plans": 5, "subscriptions": 11, "deployments": 9}


def test_test_connection_warns_about_a_role_that_can_write(source_db):
    admin_exec(source_db, f'GRANT INSERT, DELETE ON users TO "{source_db["role"]}"')
    report = nexacloud.test_connection(source_db["ro"])
    assert report["ok"]
    assert any("INSERT" in w and "DELETE" in w and "users" in w for w in report["warnings"])
    superuser = nexacloud.test_connection(source_db["admin"])
    assert any("superuser" in w for w in superuser["warnings"])


def test_test_connection_names_missing_required_columns_and_missing_grants(source_db):
    admin_exec(source_db, "ALTER TABLE plans DROP COLUMN price_cents; ALTER TABLE plans DROP COLUMN vcpu_limit;"
                          f'REVOKE SELECT ON deployments FROM "{source_db["role"]}"')
    report = nexacloud.test_connection(source_db["ro"])
    assert not report["ok"]
    assert report["tables"]["plans"]["missing"] == ["price_cents"]  # vcpu_limit is optional
    assert "permission denied" in report["tables"]["deployments"]["error"]
    with pytest.raises(nexacloud.SourceError, match="plans: price_cents"):
        nexacloud.Source(source_db["ro"])


def test_missing_table_lists_all_its_required_columns(source_db):
    admin_exec(source_db, "DROP TABLE deployments")
    report = nexacloud.test_connection(source_db["ro"])
    assert not report["tables"]["deployments"]["present"]
    assert report["tables"]["deployments"]["missing"] == list(nexacloud.TABLES["deployments"][0])


# ---------------------------------------------------------------- read-only at the database level
def test_source_sessions_are_read_only_even_for_a_superuser(source_db):
    before = snapshot(source_db)
    with nexacloud.Source(source_db["admin"]) as source:  # admin: could write if the session let it
        with source.connection.cursor() as cursor:
            with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
                cursor.execute("DELETE FROM users")
        source.connection.rollback()
        with source.connection.cursor() as cursor:
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "2min"
            cursor.execute("SHOW default_transaction_read_only")
            assert cursor.fetchone()[0] == "on"
    assert snapshot(source_db) == before


def test_statement_timeout_is_reported_in_words(source_db):
    connection = nexacloud.connect(source_db["ro"], statement_timeout=50)
    with pytest.raises(psycopg2.errors.QueryCanceled) as error, connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(1)")
    connection.close()
    assert "statement timeout" in nexacloud.explain(error.value, source_db["ro"])


def test_rows_stream_the_contract_columns_only_and_read_missing_optional_columns_as_null(source_db):
    admin_exec(source_db, "ALTER TABLE users DROP COLUMN stripe_customer_id")
    with nexacloud.Source(source_db["ro"], fetch_size=2) as source:
        users = list(source.rows("users"))
    assert len(users) == 9
    assert set(users[0]) == set(sum(nexacloud.TABLES["users"], ()))  # no marketing_opt_in
    assert all(user["stripe_customer_id"] is None for user in users)
    assert [u["id"] for u in users] == sorted(u["id"] for u in users)


# ---------------------------------------------------------------- planner over the real rows
@pytest.fixture
def source_rows(source_db):
    with nexacloud.Source(source_db["ro"]) as source:
        return {table: list(source.rows(table)) for table in nexacloud.TABLES}


def plan_all(rows):
    users = {str(r["id"]): nexacloud.plan_user(r) for r in rows["users"]}
    plans = {r["id"]: nexacloud.plan_plan(r, "CAD") for r in rows["plans"]}
    subs = {str(r["id"]): nexacloud.plan_subscription(r, {k: d.action for k, d in users.items()},
                                                      {k: d.action for k, d in plans.items()})
            for r in rows["subscriptions"]}
    deployments = {str(r["id"]): nexacloud.plan_deployment(r, {k: d.action for k, d in subs.items()})
                   for r in rows["deployments"]}
    return users, plans, subs, deployments


def test_users_are_keyed_by_normalised_email_and_messy_ones_reported(source_rows):
    users, _plans, _subs, _deps = plan_all(source_rows)
    assert users[sid("u", 2)].values["email"] == users[sid("u", 3)].values["email"] == "bob@example.com"
    assert users[sid("u", 2)].values["name"] == "Bob's Bakery Ltd."  # empty full_name
    assert users[sid("u", 4)] == (SKIP, "soft-deleted in NexaCloud", None, None)
    assert users[sid("u", 5)].values["name"] == "Zoë Ŝtraße 山田"
    long_name = users[sid("u", 6)].values["name"]
    assert long_name == LONG_COMPANY[:200].strip() and len(long_name) <= nexacloud.NAME_LIMIT
    assert users[sid("u", 7)].values["suspended"] is True
    assert users[sid("u", 8)].values["email"] == "desk.customer@example.com"
    assert users[sid("u", 9)].action == FAIL and "not-an-email" in users[sid("u", 9)].reason
    assert users[sid("u", 1)].values["stripe_customer_id"] == "cus_A1"


def test_a_company_named_like_its_person_is_not_repeated():
    """Odoo shows a contact with a company name as "<company>, <name>": never "X, X"."""
    def user(full_name, company):
        return nexacloud.plan_user({"id": "u", "email": "a@b.ca", "full_name": full_name, "company_name": company})
    same = user("Boréal Technologies", " boréal  TECHNOLOGIES ").values
    assert (same["name"], same["company_name"]) == ("Boréal Technologies", False)
    only_company = user(None, "Boréal Technologies").values
    assert (only_company["name"], only_company["company_name"]) == ("Boréal Technologies", False)
    person = user("Élise Roy", "Boréal Technologies").values
    assert (person["name"], person["company_name"]) == ("Élise Roy", "Boréal Technologies")


def test_values_of_the_wrong_type_fail_their_row_with_a_reason():
    """A column holding text where the contract says integer fails that row, readably (never raises)."""
    plan = {"id": 3, "code": "legacy", "name": "Legacy", "price_cents": 900, "currency": "CAD", "interval": "month",
            "vcpu_limit": "2 cores"}
    decision = nexacloud.plan_plan(plan, "CAD")
    assert decision.action == FAIL and decision.reason == "invalid vcpu_limit '2 cores' (not a number)"
    deployment = {"id": "d", "subscription_id": "s", "status": "running", "vcpu": "two", "ram_mb": 512,
                  "disk_gb": True}
    decision = nexacloud.plan_deployment(deployment, {"s": IMPORT})
    assert decision.action == FAIL and decision.reason == "invalid vcpu allocation 'two'"
    assert nexacloud.plan_deployment(dict(deployment, vcpu=Decimal("1.5")), {"s": IMPORT}).reason == \
        "invalid disk_gb allocation True"
    assert nexacloud.plan_deployment(dict(deployment, vcpu=float("nan"), disk_gb=1), {"s": IMPORT}).action == FAIL
    # Numeric text (a column that became text at the source) is read as the number it holds.
    assert nexacloud.plan_plan(dict(plan, vcpu_limit=" 4 "), "CAD").values["charges"] == \
        [{"metric": "vcpu", "included_quantity": 4}]
    readable = nexacloud.plan_deployment(dict(deployment, vcpu="2", disk_gb="10.5"), {"s": IMPORT})
    assert readable.values["allocation"] == {"vcpu": 2, "ram_mb": 512, "disk_gb": Decimal("10.5")}


def test_plans_currency_interval_and_limit_charges(source_rows):
    _users, plans, _subs, _deps = plan_all(source_rows)
    starter = plans[1].values
    assert starter["amount"] == Decimal("19.00") and starter["interval"] == "month"
    assert starter["charges"] == [{"metric": "vcpu", "included_quantity": 1},
                                  {"metric": "ram_mb", "included_quantity": 1024},
                                  {"metric": "disk_gb", "included_quantity": 25},
                                  {"metric": "bandwidth_gb", "included_quantity": 100}]
    assert plans[2].values["interval"] == "year" and len(plans[2].values["charges"]) == 3
    assert plans[3].values["source_active"] is False and plans[3].warning is None
    assert plans[4].values["currency"] == "USD" and "USD" in plans[4].warning
    assert plans[5].action == FAIL and "fortnight" in plans[5].reason


def test_every_stripe_status_and_orphan_has_an_outcome(source_rows):
    _users, _plans, subs, _deps = plan_all(source_rows)
    outcome = {n: subs[sid("s", n)] for n in range(1, 12)}
    assert {n for n, d in outcome.items() if d.action == IMPORT} == {1, 2, 3, 5, 7}
    assert outcome[4].reason == f"orphan: its user {sid('u', 4)} is soft-deleted"
    assert outcome[6].reason == "canceled in NexaCloud"
    assert (outcome[8].action, outcome[8].code) == (SKIP, "incomplete")
    assert "incomplete_expired" in outcome[9].reason
    assert outcome[10].action == FAIL and "could not be imported" in outcome[10].reason
    assert outcome[11].action == FAIL and "plan 5" in outcome[11].reason
    first = outcome[1].values
    assert first["start_date"] == date(2026, 11, 1) and first["next_invoice_date"] == date(2026, 12, 1)
    assert first["stripe_subscription_id"] == "sub_1" and first["end_date"] is False
    assert first["trial_end"] is False
    unknown = nexacloud.plan_subscription({"id": "x", "user_id": "u", "plan_id": 1, "status": "weird"}, {}, {})
    assert unknown.action == FAIL and "weird" in unknown.reason


def subscription_row(**values):
    return dict({"id": "s", "user_id": "u", "plan_id": 1, "status": "active", "created_at": date(2026, 11, 20),
                 "current_period_start": date(2026, 11, 20), "current_period_end": date(2026, 12, 20)}, **values)


def test_a_trial_is_imported_to_bill_from_its_end_its_first_stripe_charge():
    """Stripe charges a trialing subscription first at current_period_end (the end of its trial): the
    copy starts with the trial, and bills nothing before that date (its Date of Next Invoice)."""
    trial = nexacloud.plan_subscription(
        subscription_row(status="trialing", current_period_end=date(2026, 12, 4)), {"u": IMPORT}, {1: IMPORT})
    assert trial.action == IMPORT
    values = trial.values
    assert (values["start_date"], values["trial_end"], values["next_invoice_date"], values["end_date"]) == (
        date(2026, 11, 20), date(2026, 12, 4), date(2026, 12, 4), False)
    # A trial that cancels at its end is never charged: it ends there.
    ending = nexacloud.plan_subscription(
        subscription_row(status="trialing", current_period_end=date(2026, 12, 4), cancel_at_period_end=True),
        {"u": IMPORT}, {1: IMPORT})
    assert (ending.values["trial_end"], ending.values["end_date"]) == (date(2026, 12, 4), date(2026, 12, 4))
    # Without its end, when Stripe would charge it first is unknown: the row fails with that reason.
    unknown = nexacloud.plan_subscription(subscription_row(status="trialing", current_period_end=None),
                                          {"u": IMPORT}, {1: IMPORT})
    assert unknown.action == FAIL and "trial" in unknown.reason and "current_period_end" in unknown.reason
    active = nexacloud.plan_subscription(subscription_row(), {"u": IMPORT}, {1: IMPORT})
    assert (active.values["start_date"], active.values["trial_end"]) == (date(2026, 11, 20), False)


def test_an_incomplete_subscription_is_skipped_stripe_collects_nothing():
    """incomplete: the first payment never went through, Stripe bills nothing (and after 23 hours
    expires it): skipped and reported, like incomplete_expired, whatever its user and plan."""
    decision = nexacloud.plan_subscription(subscription_row(status="incomplete"), {"u": IMPORT}, {1: IMPORT})
    assert (decision.action, decision.code) == (SKIP, "incomplete")
    assert decision.reason == "never started in NexaCloud (incomplete: its first payment did not go through)"
    assert not nexacloud.still_billed_by_stripe(subscription_row(status="incomplete"))


def test_deployments_become_allocation_baselines(source_rows):
    _users, _plans, _subs, deployments = plan_all(source_rows)
    outcome = {n: deployments[sid("d", n)] for n in range(1, 10)}
    assert {n for n, d in outcome.items() if d.action == IMPORT} == {1, 2, 6, 9}
    assert outcome[3].reason == outcome[8].reason == "deleted in NexaCloud"
    assert outcome[4].reason == "legacy deployment without a subscription"
    assert "not imported" in outcome[5].reason  # points at a canceled subscription
    assert outcome[7].action == SKIP and "failed" in outcome[7].reason
    totals = {}
    for decision in outcome.values():
        if decision.action == IMPORT:
            nexacloud.add_allocation(totals, decision)
    assert totals == {sid("s", 1): {"vcpu": 3, "ram_mb": 3072, "disk_gb": 70},
                      sid("s", 2): {"vcpu": 4, "ram_mb": 8192, "disk_gb": 100},
                      sid("s", 5): {"vcpu": 1, "ram_mb": 512, "disk_gb": 10}}


def test_changes_tells_create_update_and_unchanged():
    assert nexacloud.changes(None, {"a": 1}) == ("create", {"a": 1})
    assert nexacloud.changes({"a": 1, "b": 2}, {"a": 1}) == ("unchanged", {})
    assert nexacloud.changes({"a": 1}, {"a": 2}) == ("update", {"a": 2})


def test_reading_everything_leaves_the_source_byte_for_byte_unchanged(source_db):
    before = snapshot(source_db)
    report = nexacloud.test_connection(source_db["ro"])
    with nexacloud.Source(source_db["ro"]) as source:
        for table in nexacloud.TABLES:
            list(source.rows(table))
    assert report["ok"] and snapshot(source_db) == before
