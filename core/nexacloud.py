"""NexaCloud source: a strictly read-only reader and the row-to-action planner of the importer.

The reader (psycopg2 only) opens sessions that are read-only *at the database level*
(``default_transaction_read_only`` plus a read-only REPEATABLE READ transaction, one
consistent snapshot per run), with connect and statement timeouts, and streams rows through
server-side cursors. Only the columns of the contract are selected, so extra production
columns are ignored; a missing *optional* column reads as NULL, a missing *required* one is
reported by :func:`test_connection` and refuses the import.

The planner is pure: it turns one source row into what the importer must do with it
(import it with these values, skip it on purpose, or fail it) and a reason a person can read.
"""
import re
from collections import namedtuple
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions

CONNECT_TIMEOUT = 10          # seconds
STATEMENT_TIMEOUT = 120_000   # milliseconds, per statement
FETCH_SIZE = 2000             # rows per round trip of a server-side cursor

# table → (required columns, optional columns). Anything else in production is ignored.
TABLES = {
    "users": (("id", "email"),
              ("full_name", "company_name", "stripe_customer_id", "is_active", "created_at", "deleted_at")),
    "plans": (("id", "code", "name", "price_cents", "currency", "interval"),
              ("vcpu_limit", "ram_mb_limit", "disk_gb_limit", "bandwidth_gb_included", "stripe_price_id",
               "is_active")),
    "subscriptions": (("id", "user_id", "plan_id", "status"),
                      ("stripe_subscription_id", "current_period_start", "current_period_end",
                       "cancel_at_period_end", "created_at", "canceled_at")),
    "deployments": (("id", "user_id", "subscription_id", "status", "vcpu", "ram_mb", "disk_gb"),
                    ("name", "region", "created_at", "deleted_at")),
}

# Plan limit column → (metric code, metric name, event property). Deployment allocations use the same metrics.
LIMIT_METRICS = {
    "vcpu_limit": ("vcpu", "vCPUs", "vcpu"),
    "ram_mb_limit": ("ram_mb", "RAM (MiB)", "ram_mb"),
    "disk_gb_limit": ("disk_gb", "Disk (GB)", "disk_gb"),
    "bandwidth_gb_included": ("bandwidth_gb", "Bandwidth (GB)", "bandwidth_gb"),
}
ALLOCATION_METRICS = ("vcpu", "ram_mb", "disk_gb")

STRIPE_STATUSES = ("trialing", "active", "past_due", "unpaid", "paused", "incomplete",
                   "incomplete_expired", "canceled")
# Statuses the importer leaves out. ``incomplete``: the first payment never went through; Stripe collects
# nothing and, after 23 hours, expires it (``incomplete_expired``). It never started: if the customer pays
# after all, a later import (or the app, through the API) brings it in as a subscription that bills.
SKIPPED_STATUSES = {
    "canceled": "canceled in NexaCloud",
    "incomplete": "never started in NexaCloud (incomplete: its first payment did not go through)",
    "incomplete_expired": "never started in NexaCloud (incomplete_expired)",
}
# Statuses of subscriptions that never started: Stripe bills them nothing, and Odoo never activates a copy.
NOT_STARTED_STATUSES = ("incomplete", "incomplete_expired")
# Statuses Stripe still charges at each renewal (a trial is charged first when it ends, at its
# current_period_end; incomplete subscriptions collect nothing).
BILLED_STATUSES = ("active", "past_due", "unpaid", "paused")
MONTHS_PER_INTERVAL = {"month": Decimal(1), "year": Decimal(12), "week": Decimal(12) / 52}
LIVE_DEPLOYMENT_STATUSES = ("provisioning", "running", "stopped")
INTERVALS = {"month": "month", "monthly": "month", "year": "year", "yearly": "year", "annual": "year",
             "week": "week", "weekly": "week"}
NAME_LIMIT = 200


class SourceError(Exception):
    """A problem with the source, in words a person understands (never carries a password)."""


# ---------------------------------------------------------------------------- DSN
def normalise_dsn(dsn):
    """``(libpq dsn, notes)`` from a libpq DSN or NexaCloud's SQLAlchemy URL.

    ``postgresql+asyncpg://…`` loses its ``+asyncpg`` (and asyncpg's ``ssl=`` becomes
    libpq's ``sslmode=``); every change is described in ``notes``.
    """
    dsn = (dsn or "").strip()
    if not dsn:
        raise SourceError("No NexaCloud connection is configured: set the system parameter "
                          "fusion_billing.nexacloud_dsn to a libpq DSN.")
    notes = []
    match = re.match(r"^(postgres(?:ql)?)\+(\w+)://", dsn)
    if match:
        dsn = f"{match.group(1)}://{dsn[match.end():]}"
        notes.append(f"The SQLAlchemy URL was accepted with '+{match.group(2)}' removed (libpq does not "
                     "know driver suffixes).")
    if dsn.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(dsn)
        query = parse_qsl(parts.query, keep_blank_values=True)
        if any(key == "ssl" for key, _value in query):
            query = [("sslmode" if key == "ssl" else key, value) for key, value in query]
            notes.append("asyncpg's 'ssl=' option was translated to libpq's 'sslmode='.")
            dsn = urlunsplit(parts._replace(query=urlencode(query)))
    return dsn, notes


def _password(dsn):
    try:
        return psycopg2.extensions.parse_dsn(dsn).get("password")
    except psycopg2.ProgrammingError:
        match = re.search(r"://[^:/@]*:([^@]*)@", dsn) or re.search(r"password\s*=\s*'?([^\s']+)", dsn)
        return match.group(1) if match else None


def redact(text, dsn):
    """``text`` with the DSN's password (plain or URL-encoded) removed."""
    text = str(text)
    secret = dsn and _password(dsn)
    if secret:
        from urllib.parse import quote, unquote
        for form in {secret, quote(secret, safe=""), unquote(secret)}:
            if form:
                text = text.replace(form, "********")
    return text


def describe(dsn):
    """Where a DSN points, without its password (for reports): ``user@host:port/dbname``."""
    try:
        params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return "an unreadable DSN"
    return "{user}@{host}:{port}/{dbname}".format(
        user=params.get("user", "(default user)"), host=params.get("host", "(local socket)"),
        port=params.get("port", "5432"), dbname=params.get("dbname", "(default database)"))


def explain(error, dsn):
    """A psycopg2 error as a sentence a person understands, password redacted."""
    text = str(error).strip()
    lowered = text.lower()
    where = describe(dsn)
    if isinstance(error, psycopg2.ProgrammingError) and "invalid dsn" in lowered:
        reason = "the connection string is not a valid libpq DSN or postgresql:// URL"
    elif "could not translate host name" in lowered or "name or service not known" in lowered:
        reason = "bad host: the host name cannot be resolved"
    elif "connection refused" in lowered:
        reason = "bad host or port: nothing accepts connections there (connection refused)"
    elif "timeout expired" in lowered or "timed out" in lowered:
        reason = f"timeout: the server did not answer within {CONNECT_TIMEOUT} s (firewall or network route?)"
    elif "password authentication failed" in lowered or "no password supplied" in lowered:
        reason = "bad user name or password"
    elif "database" in lowered and "does not exist" in lowered:
        reason = "no such database"
    elif "role" in lowered and "does not exist" in lowered:
        reason = "no such user (role)"
    elif "permission denied" in lowered:
        reason = "permission denied: " + text.splitlines()[0]
    elif "canceling statement due to statement timeout" in lowered:
        reason = f"a query took longer than the {STATEMENT_TIMEOUT // 1000} s statement timeout"
    elif "pg_hba.conf" in lowered:
        reason = "the server refuses this client (pg_hba.conf has no entry for Odoo's address)"
    else:
        reason = text.splitlines()[0] if text else error.__class__.__name__
    return redact(f"Cannot read NexaCloud at {where}: {reason}.", dsn)


# ---------------------------------------------------------------------------- connection
def connect(dsn, connect_timeout=CONNECT_TIMEOUT, statement_timeout=STATEMENT_TIMEOUT):
    """A read-only connection: every transaction is READ ONLY, REPEATABLE READ (one snapshot)."""
    try:
        connection = psycopg2.connect(
            dsn, connect_timeout=connect_timeout, application_name="odoo-fusion-billing-import",
            options=f"-c default_transaction_read_only=on -c statement_timeout={int(statement_timeout)}")
        connection.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ,
                               readonly=True, autocommit=False)
    except psycopg2.Error as error:
        raise SourceError(explain(error, dsn)) from None
    return connection


def columns(connection):
    """{table: set(columns)} of the contract's tables present in schema public."""
    with connection.cursor() as cursor:
        # pg_catalog, not information_schema: the latter hides tables the role cannot read.
        cursor.execute("""
            SELECT c.relname, a.attname
              FROM pg_class c
              JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
              JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND c.relname = ANY(%s)""", [list(TABLES)])
        found = {}
        for table, column in cursor.fetchall():
            found.setdefault(table, set()).add(column)
    return found


def missing_columns(found):
    """{table: [required columns missing]} (a missing table lists all of them)."""
    return {table: [c for c in required if c not in found.get(table, ())]
            for table, (required, _optional) in TABLES.items()
            if any(c not in found.get(table, ()) for c in required)}


def test_connection(dsn):
    """What Test Connection shows. Never raises for source problems; never writes anything.

    ``{"ok", "error", "dsn", "server_version", "role", "superuser", "write_privileges",
    "warnings", "tables": {table: {"present", "missing", "rows", "error"}}}``
    """
    report = {"ok": False, "error": None, "dsn": describe(dsn), "server_version": None, "role": None,
              "superuser": None, "write_privileges": [], "warnings": [], "tables": {}}
    try:
        connection = connect(dsn)
    except SourceError as error:
        report["error"] = str(error)
        return report
    try:
        with connection.cursor() as cursor:
            cursor.execute("""SELECT current_setting('server_version'), current_user, r.rolsuper,
                                     r.rolcreaterole, r.rolcreatedb, current_setting('transaction_read_only')
                                FROM pg_roles r WHERE r.rolname = current_user""")
            version, role, superuser, createrole, createdb, read_only = cursor.fetchone()
            report.update(server_version=version, role=role, superuser=superuser)
            cursor.execute("""
                SELECT c.relname, array_remove(ARRAY[
                         CASE WHEN has_table_privilege(c.oid, 'INSERT') THEN 'INSERT' END,
                         CASE WHEN has_table_privilege(c.oid, 'UPDATE') THEN 'UPDATE' END,
                         CASE WHEN has_table_privilege(c.oid, 'DELETE') THEN 'DELETE' END,
                         CASE WHEN has_table_privilege(c.oid, 'TRUNCATE') THEN 'TRUNCATE' END], NULL)
                  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
                 ORDER BY c.relname""")
            report["write_privileges"] = [f"{privs} on {table}" for table, privs in cursor.fetchall() if privs]
            cursor.execute("SELECT has_schema_privilege('public', 'CREATE'), "
                           "has_database_privilege(current_database(), 'CREATE')")
            schema_create, database_create = cursor.fetchone()
        warnings = report["warnings"]
        if superuser:
            warnings.append(f"Role '{role}' is a superuser: use the least-privilege read-only role from the README.")
        if report["write_privileges"]:
            warnings.append(f"Role '{role}' can write: " + "; ".join(report["write_privileges"])
                            + ". The importer never writes, but grant SELECT only.")
        if createrole or createdb or schema_create or database_create:
            warnings.append(f"Role '{role}' can create roles, databases or objects; grant SELECT only.")
        if read_only != "on":
            warnings.append("The session is not read-only (unexpected).")
        found = columns(connection)
        missing = missing_columns(found)
        for table in TABLES:
            entry = {"present": table in found, "missing": missing.get(table, []), "rows": None, "error": None}
            if entry["present"]:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(f'SELECT count(*) FROM public."{table}"')
                        entry["rows"] = cursor.fetchone()[0]
                except psycopg2.Error as error:
                    connection.rollback()
                    entry["error"] = explain(error, dsn).split(": ", 1)[-1]
            report["tables"][table] = entry
        report["ok"] = not missing and not any(t["error"] for t in report["tables"].values())
        if not report["ok"]:
            report["error"] = "The source is reachable but not importable: see the tables below."
    except psycopg2.Error as error:
        report["error"] = explain(error, dsn)
    finally:
        connection.close()
    return report


class Source:
    """One import's read-only view of NexaCloud: a single snapshot, streamed table by table."""

    def __init__(self, dsn, fetch_size=FETCH_SIZE):
        self.dsn = dsn
        self.fetch_size = fetch_size
        self.connection = connect(dsn)
        try:
            self.found = columns(self.connection)
        except psycopg2.Error as error:
            self.close()
            raise SourceError(explain(error, dsn)) from None
        missing = missing_columns(self.found)
        if missing:
            self.close()
            raise SourceError("NexaCloud is missing required columns: " + "; ".join(
                f"{table}: {', '.join(cols)}" for table, cols in missing.items()) + ". Nothing was imported.")

    def rows(self, table):
        """Stream ``table`` as dicts of the contract's columns, ordered by id (server-side cursor)."""
        required, optional = TABLES[table]
        present = self.found.get(table, set())
        select = ", ".join(f'"{c}"' if c in present else f'NULL AS "{c}"' for c in required + optional)
        try:
            with self.connection.cursor(name=f"fusion_billing_{table}") as cursor:
                cursor.itersize = self.fetch_size
                cursor.execute(f'SELECT {select} FROM public."{table}" ORDER BY "id"')
                names = [d[0] for d in cursor.description] if cursor.description else list(required + optional)
                for record in cursor:
                    yield dict(zip(names, record))
        except psycopg2.Error as error:
            raise SourceError(explain(error, self.dsn)) from None

    def close(self):
        if self.connection and not self.connection.closed:
            self.connection.rollback()
            self.connection.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------- planner
class Decision(namedtuple("Decision", "action reason values warning", defaults=(None, None, None))):
    """What to do with one source row. ``code`` names why a row is skipped or failed, for code that
    counts them: ``canceled``, ``incomplete``, ``incomplete_expired``, ``user_deleted`` (its user is
    soft-deleted), ``parent_failed``, ``parent_skipped``, ``orphan``, ``trial_end_unknown``; None
    otherwise. It is kept out of the tuple, so a decision still equals ``(action, reason, values, warning)``."""

    code = None

    def __new__(cls, action, reason=None, values=None, warning=None, code=None):
        decision = super().__new__(cls, action, reason, values, warning)
        decision.code = code
        return decision


IMPORT, SKIP, FAIL = "import", "skip", "fail"


def normalise_email(email):
    """Trim + case-fold (one person across case/space variants and across apps)."""
    return (email or "").strip().casefold()


def clean_text(value, limit=NAME_LIMIT):
    """Collapsed whitespace, at most ``limit`` characters (unicode kept as is)."""
    text = " ".join(str(value or "").split())
    return text[:limit - 1].rstrip() + "…" if len(text) > limit else text


def _number(value):
    """``value`` as a finite number, or None when it is not one. A NexaCloud column may hold
    text where the contract says integer: numeric text is read, anything else is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            return None
        if value.is_finite() and value == value.to_integral_value():
            value = int(value)
    if isinstance(value, (int, float, Decimal)) and value == value and abs(value) != float("inf"):
        return value  # (NaN is not equal to itself)
    return None


def _date(value):
    return value.date() if hasattr(value, "date") and callable(value.date) else value


def plan_user(row):
    """users row → account link + partner values, keyed by normalised e-mail."""
    if row.get("deleted_at"):
        return Decision(SKIP, "soft-deleted in NexaCloud")
    email = normalise_email(row.get("email"))
    if not email:
        return Decision(FAIL, "no e-mail address")
    if "@" not in email or " " in email:
        return Decision(FAIL, f"invalid e-mail address '{clean_text(row['email'], 80)}'")
    company = clean_text(row.get("company_name"))
    name = clean_text(row.get("full_name")) or company or email
    if company and company.casefold() == name.casefold():
        # A company named like the person (or a user with only a company name): Odoo would show
        # "Boréal Technologies, Boréal Technologies" for a contact named after its own company.
        company = ""
    return Decision(IMPORT, values={
        "external_id": str(row["id"]), "email": email, "name": name, "company_name": company or False,
        "stripe_customer_id": (row.get("stripe_customer_id") or "").strip() or False,
        "suspended": row.get("is_active") is False,
    })


def plan_plan(row, service_currency):
    """plans row → catalog plan values + the charges its limits imply."""
    code = (row.get("code") or "").strip()
    if not code:
        return Decision(FAIL, "plan has no code")
    interval = INTERVALS.get((row.get("interval") or "").strip().lower())
    if not interval:
        return Decision(FAIL, f"unknown billing interval '{row.get('interval')}'")
    try:
        amount = Decimal(int(row["price_cents"])) / 100
    except (TypeError, ValueError, InvalidOperation):
        return Decision(FAIL, f"unreadable price '{row.get('price_cents')}'")
    if amount < 0:
        return Decision(FAIL, f"negative price {amount}")
    currency = (row.get("currency") or "").strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        return Decision(FAIL, f"invalid currency '{row.get('currency')}'")
    charges = []
    for column, (metric, _name, _prop) in LIMIT_METRICS.items():
        limit = row.get(column)
        if limit is not None:
            if _number(limit) is None:
                return Decision(FAIL, f"invalid {column} {clean_text(repr(limit), 80)} (not a number)")
            limit = _number(limit)
            if limit < 0:
                return Decision(FAIL, f"negative {column} {limit}")
            charges.append({"metric": metric, "included_quantity": limit})
    warning = None
    if currency != service_currency:
        warning = f"priced in {currency}, not {service_currency}: its subscriptions are copied in {currency}"
    return Decision(IMPORT, values={
        "code": code, "name": clean_text(row.get("name")) or code, "amount": amount, "currency": currency,
        "interval": interval, "source_active": row.get("is_active") is not False,
        "stripe_price_id": (row.get("stripe_price_id") or "").strip() or False, "charges": charges,
    }, warning=warning)


def plan_subscription(row, users, plans):
    """subscriptions row → draft shadow subscription values.

    ``users``: {user id: Decision.action of that user}; ``plans``: {plan id: action}.

    The copy starts on ``current_period_start`` (else ``created_at``) and is next invoiced on
    ``current_period_end``, as Stripe renews it. A ``trialing`` subscription is charged first when
    its trial ends, at ``current_period_end``: its ``trial_end`` is that day, before which Odoo bills
    nothing (fee or usage). ``incomplete`` ones are skipped (:data:`SKIPPED_STATUSES`).
    """
    status = (row.get("status") or "").strip().lower()
    if status in SKIPPED_STATUSES:
        return Decision(SKIP, SKIPPED_STATUSES[status], code=status)
    if status not in STRIPE_STATUSES:
        return Decision(FAIL, f"unknown status '{row.get('status')}'")
    user_id, plan_id = str(row["user_id"]), row["plan_id"]
    problem = _parent_problem("user", user_id, users.get(user_id), f"orphan: its user {user_id} is soft-deleted") \
        or _parent_problem("plan", plan_id, plans.get(plan_id), None)
    if problem:
        return problem
    start = _date(row.get("current_period_start")) or _date(row.get("created_at"))
    period_end = _date(row.get("current_period_end"))
    trial_end = False
    if status == "trialing":
        if not period_end:
            return Decision(FAIL, "in trial without a current_period_end: when Stripe charges it first is unknown",
                            code="trial_end_unknown")
        trial_end = period_end
    return Decision(IMPORT, values={
        "external_id": str(row["id"]), "user_id": user_id, "plan_id": plan_id, "status": status,
        "stripe_subscription_id": (row.get("stripe_subscription_id") or "").strip() or False,
        "start_date": start or False, "next_invoice_date": period_end or False, "trial_end": trial_end,
        "end_date": period_end if row.get("cancel_at_period_end") and period_end else False,
    })


def _parent_problem(kind, key, action, skipped_reason):
    """Why a row cannot be imported because of the parent row it points at (None: no problem)."""
    if action is None:
        return Decision(FAIL, f"orphan: {kind} {key} does not exist", code="orphan")
    if action == SKIP:
        return Decision(SKIP, skipped_reason, code="user_deleted" if kind == "user" else "parent_skipped")
    if action == FAIL:
        return Decision(FAIL, f"its {kind} {key} could not be imported", code="parent_failed")
    return None


def still_billed_by_stripe(row):
    """Whether Stripe still charges this subscriptions row at its renewals (whatever NexaCloud did with its user)."""
    return (row.get("status") or "").strip().lower() in BILLED_STATUSES


def monthly_amount(plan_row):
    """A plans row's price per month (a yearly price counts 1/12), or None when unreadable."""
    months = MONTHS_PER_INTERVAL.get(INTERVALS.get((plan_row.get("interval") or "").strip().lower()))
    try:
        price = Decimal(int(plan_row["price_cents"])) / 100
    except (TypeError, ValueError, KeyError):
        return None
    return price / months if months else None


def plan_deployment(row, subscriptions):
    """deployments row → its allocation, counted towards its subscription's baselines.

    ``subscriptions``: {subscription id: Decision.action of that subscription}.
    """
    status = (row.get("status") or "").strip().lower()
    if row.get("deleted_at") or status == "deleted":
        return Decision(SKIP, "deleted in NexaCloud")
    if status == "failed":
        return Decision(SKIP, "failed deployment (allocates nothing)")
    if status not in LIVE_DEPLOYMENT_STATUSES:
        return Decision(FAIL, f"unknown status '{row.get('status')}'")
    if row.get("subscription_id") is None:
        return Decision(SKIP, "legacy deployment without a subscription")
    sub_id = str(row["subscription_id"])
    problem = _parent_problem("subscription", sub_id, subscriptions.get(sub_id),
                              f"its subscription {sub_id} is not imported (canceled or orphan)")
    if problem:
        return problem
    allocation = {}
    for metric in ALLOCATION_METRICS:
        value = _number(row.get(metric))
        if value is None or value < 0:
            return Decision(FAIL, f"invalid {metric} allocation {clean_text(repr(row.get(metric)), 80)}")
        allocation[metric] = value
    return Decision(IMPORT, values={"subscription_id": sub_id, "allocation": allocation})


def add_allocation(totals, decision):
    """Fold one imported deployment into ``totals`` {subscription id: {metric: units}}."""
    per_sub = totals.setdefault(decision.values["subscription_id"], dict.fromkeys(ALLOCATION_METRICS, 0))
    for metric, value in decision.values["allocation"].items():
        per_sub[metric] += value
    return totals


def changes(current, wanted):
    """``"create"`` when nothing exists, ``"unchanged"`` or ``"update"`` with the differing keys."""
    if current is None:
        return "create", dict(wanted)
    diff = {key: value for key, value in wanted.items() if current.get(key) != value}
    return ("update", diff) if diff else ("unchanged", {})
