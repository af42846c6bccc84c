"""NexaCloud source databases for the tests and the import benchmark (never used in production).

:data:`SCHEMA_SQL` is the contract of ../shared/docs/nexacloud-source.md (plus an extra column
the importer must ignore). :func:`load_messy_sample` inserts one row per messy case the
importer must survive; :func:`load_scale` fills NexaCloud's real size with SQL only.
"""
import uuid

SCHEMA_SQL = """
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email varchar(320) NOT NULL UNIQUE,
    full_name varchar(200),
    company_name varchar(200),
    stripe_customer_id varchar(64),
    is_active boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz,
    marketing_opt_in boolean NOT NULL DEFAULT false
);
CREATE TABLE plans (
    id integer PRIMARY KEY,
    code varchar(64) NOT NULL UNIQUE,
    name varchar(120) NOT NULL,
    price_cents integer NOT NULL,
    currency char(3) NOT NULL,
    interval varchar(10) NOT NULL,
    vcpu_limit integer, ram_mb_limit integer, disk_gb_limit integer, bandwidth_gb_included integer,
    stripe_price_id varchar(64),
    is_active boolean NOT NULL DEFAULT true
);
CREATE TABLE subscriptions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id),
    plan_id integer NOT NULL REFERENCES plans(id),
    status varchar(24) NOT NULL,
    stripe_subscription_id varchar(64),
    current_period_start timestamptz,
    current_period_end timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    canceled_at timestamptz
);
CREATE TABLE deployments (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id),
    subscription_id uuid REFERENCES subscriptions(id),
    name varchar(120) NOT NULL,
    status varchar(16) NOT NULL,
    region varchar(32),
    vcpu integer NOT NULL, ram_mb integer NOT NULL, disk_gb integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz
);
"""

READ_ONLY_ROLE_SQL = """
CREATE ROLE {role} LOGIN PASSWORD %(password)s;
GRANT CONNECT ON DATABASE {database} TO {role};
GRANT USAGE ON SCHEMA public TO {role};
GRANT SELECT ON users, plans, subscriptions, deployments TO {role};
"""


def sid(kind, number):
    """Deterministic uuid of sample row ``number`` of ``kind`` (u, s, d)."""
    return str(uuid.UUID(int={"u": 1, "s": 2, "d": 3}[kind] << 64 | number))


LONG_COMPANY = "Compagnie Générale des Très Longs Noms d'Entreprise du Grand Nord Canadien " * 3

USERS = [  # (n, email, full_name, company_name, stripe customer, is_active, deleted)
    (1, "alice@example.com", "Alice Martin", None, "cus_A1", True, False),
    (2, " Bob@Example.COM ", "", "Bob's Bakery Ltd.", "cus_B2", True, False),
    (3, "bob@example.com", "Bob Baker", None, None, True, False),            # same person as 2
    (4, "carol@example.com", "Carol Gone", None, "cus_C4", True, True),     # soft-deleted
    (5, "zoe@example.jp", "Zoë Ŝtraße 山田", None, None, True, False),       # unicode
    (6, "ceo@longname.example", None, LONG_COMPANY[:200], None, True, False),
    (7, "suspended@example.com", "Sam Suspended", None, "cus_S7", False, False),
    (8, "Desk.Customer@Example.com", "Dana Desk", None, None, True, False),  # already a NexaDesk customer
    (9, "not-an-email", "Nemo Invalid", None, None, True, False),
]
PLANS = [  # (id, code, name, cents, currency, interval, vcpu, ram, disk, bw, active)
    (1, "starter", "Starter", 1900, "CAD", "month", 1, 1024, 25, 100, True),
    (2, "pro-annual", "Pro (annual)", 19000, "CAD", "year", 4, 8192, 100, None, True),
    (3, "legacy", "Legacy 2019", 900, "CAD", "month", None, None, None, None, False),
    (4, "usd-pro", "Pro (USD)", 2500, "USD", "month", 2, 2048, 50, 200, True),
    (5, "fortnightly", "Odd interval", 1000, "CAD", "fortnight", None, None, None, None, True),
]
SUBSCRIPTIONS = [  # (n, user n, plan id, status)
    (1, 1, 1, "active"), (2, 2, 2, "trialing"), (3, 3, 3, "past_due"), (4, 4, 1, "active"),
    (5, 5, 4, "unpaid"), (6, 6, 1, "canceled"), (7, 7, 1, "paused"), (8, 8, 1, "incomplete"),
    (9, 1, 1, "incomplete_expired"), (10, 9, 1, "active"), (11, 1, 5, "active"),
]
DEPLOYMENTS = [  # (n, user n, subscription n or None, name, status, vcpu, ram, disk, deleted)
    (1, 1, 1, "web-1", "running", 2, 2048, 50, False),
    (2, 1, 1, "worker", "stopped", 1, 1024, 20, False),
    (3, 1, 1, "old", "deleted", 4, 4096, 80, False),
    (4, 1, None, "legacy-vm", "running", 1, 512, 10, False),
    (5, 6, 6, "after-cancel", "running", 2, 2048, 40, False),
    (6, 2, 2, "bakery-shop", "provisioning", 4, 8192, 100, False),
    (7, 5, 5, "broken", "failed", 1, 512, 10, False),
    (8, 1, 1, "soft-gone", "running", 8, 8192, 100, True),
    (9, 5, 5, "Ünïcødé 名前", "running", 1, 512, 10, False),
]


def load_messy_sample(cursor):
    """Create the schema and one row per messy case of the contract."""
    cursor.execute(SCHEMA_SQL)
    for n, email, full_name, company, stripe, active, deleted in USERS:
        cursor.execute("""INSERT INTO users (id, email, full_name, company_name, stripe_customer_id, is_active,
                                             created_at, deleted_at)
                          VALUES (%s, %s, %s, %s, %s, %s, '2025-01-01', CASE WHEN %s THEN now() END)""",
                       (sid("u", n), email, full_name, company, stripe, active, deleted))
    for plan in PLANS:
        cursor.execute("""INSERT INTO plans (id, code, name, price_cents, currency, interval, vcpu_limit,
                                             ram_mb_limit, disk_gb_limit, bandwidth_gb_included, is_active,
                                             stripe_price_id)
                          VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'price_' || %s)""",
                       plan + (plan[1],))
    for n, user, plan, status in SUBSCRIPTIONS:
        cursor.execute("""INSERT INTO subscriptions (id, user_id, plan_id, status, stripe_subscription_id,
                                                     current_period_start, current_period_end, created_at,
                                                     canceled_at)
                          VALUES (%s, %s, %s, %s, 'sub_' || %s, '2026-11-01', '2026-12-01', '2025-02-01',
                                  CASE WHEN %s = 'canceled' THEN timestamptz '2026-10-15' END)""",
                       (sid("s", n), sid("u", user), plan, status, n, status))
    for n, user, sub, name, status, vcpu, ram, disk, deleted in DEPLOYMENTS:
        cursor.execute("""INSERT INTO deployments (id, user_id, subscription_id, name, status, region, vcpu, ram_mb,
                                                   disk_gb, deleted_at)
                          VALUES (%s, %s, %s, %s, %s, 'ca-central', %s, %s, %s, CASE WHEN %s THEN now() END)""",
                       (sid("d", n), sid("u", user), sid("s", sub) if sub else None, name, status,
                        vcpu, ram, disk, deleted))


def load_scale(cursor, users=20_000, subscriptions=25_000, deployments=60_000, plans=40):
    """Create the schema filled to NexaCloud's real size (with a realistic share of messy rows)."""
    cursor.execute(SCHEMA_SQL)
    cursor.execute("""
        INSERT INTO plans (id, code, name, price_cents, currency, interval, vcpu_limit, ram_mb_limit,
                           disk_gb_limit, bandwidth_gb_included, is_active)
        SELECT g, 'plan-' || g, 'Plan ' || g, 500 * g, CASE WHEN g %% 20 = 0 THEN 'USD' ELSE 'CAD' END,
               CASE WHEN g %% 5 = 0 THEN 'year' ELSE 'month' END, g %% 8 + 1, 1024 * (g %% 8 + 1), 25 * g,
               CASE WHEN g %% 3 = 0 THEN NULL ELSE 100 * g END, g %% 7 <> 0
          FROM generate_series(1, %(plans)s) g""", {"plans": plans})
    cursor.execute("""
        INSERT INTO users (id, email, full_name, company_name, stripe_customer_id, is_active, created_at, deleted_at)
        SELECT (lpad(to_hex(1), 16, '0') || lpad(to_hex(g), 16, '0'))::uuid,
               CASE WHEN g %% 500 = 0 THEN ' User' || g || '@Example.COM ' ELSE 'user' || g || '@example.com' END,
               CASE WHEN g %% 50 = 0 THEN NULL ELSE 'Client ' || g || ' Dupré' END,
               CASE WHEN g %% 4 = 0 THEN 'Company ' || g || ' Inc.' END, 'cus_' || g, g %% 97 <> 0,
               now() - interval '1000 days', CASE WHEN g %% 100 = 0 THEN now() END
          FROM generate_series(1, %(users)s) g""", {"users": users})
    # Stripe-consistent periods: each subscription renews on the anniversaries of its creation
    # (monthly or yearly, Stripe's end-of-month clamping: Jan 31 → Feb 28 → Mar 31); its current
    # period is the one containing now (or its cancellation); trials run 14 days. Statuses and
    # plans are spread so that soft-deleted users hold subscriptions of every status.
    cursor.execute("""
        WITH base AS (
            SELECT g, (ARRAY['active','active','active','active','active','active','active','active','active',
                             'active','active','trialing','trialing','past_due','unpaid','paused','incomplete',
                             'incomplete_expired','canceled','canceled'])[(g + g / 100) %% 20 + 1] AS status,
                   (7 * g + g / 100) %% %(plans)s + 1 AS plan_id
              FROM generate_series(1, %(subscriptions)s) g
        ), dated AS (
            SELECT b.*, p.interval = 'year' AS yearly,
                   CASE WHEN b.status IN ('trialing', 'incomplete', 'incomplete_expired')
                        THEN now() - make_interval(days => g %% 12 + 1, secs => g %% 86400)
                        ELSE now() - make_interval(days => (g * 7919) %% 900 + 50, secs => g %% 86400) END AS created,
                   CASE WHEN b.status = 'canceled' THEN now() - make_interval(days => g %% 45, secs => g %% 3600 + 60)
                   END AS canceled
              FROM base b JOIN plans p ON p.id = b.plan_id
        ), aged AS (
            SELECT d.*, age(COALESCE(d.canceled, now()), d.created) AS age FROM dated d
        ), counted AS (
            SELECT a.*, CASE WHEN a.status IN ('trialing', 'incomplete', 'incomplete_expired') THEN 0
                             WHEN a.yearly THEN extract(year FROM a.age)::int
                             ELSE (extract(year FROM a.age) * 12 + extract(month FROM a.age))::int END AS n0
              FROM aged a
        ), periods AS (  -- age() counts one interval short at some month ends (Jan 31 → Nov 30)
            SELECT c.*, c.n0 + (c.status NOT IN ('trialing', 'incomplete', 'incomplete_expired') AND
                                c.created + CASE WHEN c.yearly THEN make_interval(years => c.n0 + 1)
                                                 ELSE make_interval(months => c.n0 + 1) END
                                <= COALESCE(c.canceled, now()))::int AS n
              FROM counted c
        )
        INSERT INTO subscriptions (id, user_id, plan_id, status, stripe_subscription_id, current_period_start,
                                   current_period_end, cancel_at_period_end, created_at, canceled_at)
        SELECT (lpad(to_hex(2), 16, '0') || lpad(to_hex(g), 16, '0'))::uuid,
               (lpad(to_hex(1), 16, '0') || lpad(to_hex((g - 1) %% %(users)s + 1), 16, '0'))::uuid,
               plan_id, status, 'sub_' || g,
               created + CASE WHEN yearly THEN make_interval(years => n) ELSE make_interval(months => n) END,
               CASE WHEN status = 'trialing' THEN created + interval '14 days'
                    WHEN yearly THEN created + make_interval(years => n + 1)
                    ELSE created + make_interval(months => n + 1) END,
               status NOT IN ('canceled', 'trialing', 'incomplete', 'incomplete_expired') AND g %% 13 = 0,
               created,
               CASE WHEN status = 'canceled' THEN canceled
                    WHEN status NOT IN ('trialing', 'incomplete', 'incomplete_expired') AND g %% 13 = 0
                    -- cancel_at_period_end: Stripe sets canceled_at when the cancellation is asked for
                    THEN LEAST(now() - interval '1 minute', created + CASE WHEN yearly THEN make_interval(years => n)
                                                                  ELSE make_interval(months => n) END
                                                          + interval '1 day') END
          FROM periods""", {"users": users, "plans": plans, "subscriptions": subscriptions})
    cursor.execute("""
        INSERT INTO deployments (id, user_id, subscription_id, name, status, region, vcpu, ram_mb, disk_gb,
                                 created_at, deleted_at)
        SELECT (lpad(to_hex(3), 16, '0') || lpad(to_hex(g), 16, '0'))::uuid,
               (lpad(to_hex(1), 16, '0') || lpad(to_hex(((g - 1) %% %(subscriptions)s) %% %(users)s + 1), 16, '0'))::uuid,
               CASE WHEN g %% 25 = 0 THEN NULL
                    ELSE (lpad(to_hex(2), 16, '0') || lpad(to_hex((g - 1) %% %(subscriptions)s + 1), 16, '0'))::uuid END,
               'vm-' || g, (ARRAY['running','running','running','stopped','provisioning','failed','deleted'])[g %% 7 + 1],
               'ca-central', g %% 4 + 1, 1024 * (g %% 4 + 1), 20 * (g %% 5 + 1), now() - interval '100 days',
               CASE WHEN g %% 31 = 0 THEN now() END
          FROM generate_series(1, %(deployments)s) g""",
                   {"users": users, "subscriptions": subscriptions, "deployments": deployments})


def create_read_only_role(cursor, role, password, database):
    """The README's least-privilege role (run by an admin connected to ``database``)."""
    cursor.execute(READ_ONLY_ROLE_SQL.format(role=role, database=database), {"password": password})
