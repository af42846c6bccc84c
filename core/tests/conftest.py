"""Tier 1 (Odoo-free) test configuration: make ``core`` importable as a top-level package."""
import os
import sys

ADDON_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ADDON_ROOT not in sys.path:
    sys.path.insert(0, ADDON_ROOT)


# ---------------------------------------------------------------- a real PostgreSQL (never mocked)
import glob  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import uuid  # noqa: E402

import pytest  # noqa: E402


# The admin roles connect without a password; every other role (the importer's) must give one.
HBA = """local all all trust
host all postgres 127.0.0.1/32 trust
host all odoo 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def _start_cluster():
    """A throwaway PostgreSQL cluster from the machine's server binaries: (admin dsn, stop())."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        pytest.fail("no PostgreSQL server binaries (initdb) and FUSION_TEST_PG_DSN is not set")
    bindir = os.path.dirname(bins[-1])
    root = tempfile.mkdtemp(prefix="fusion-billing-pytest-pg.")
    os.chmod(root, 0o755)
    as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(as_owner + [f"{bindir}/initdb", "-D", f"{root}/data", "-U", "postgres", "-A", "trust",
                               "-E", "UTF8", "--locale=C.UTF-8"], check=True, stdout=subprocess.DEVNULL)
    with open(f"{root}/data/pg_hba.conf", "w") as hba:  # passwords are checked for every other role
        hba.write(HBA)
    subprocess.run(as_owner + [f"{bindir}/pg_ctl", "-D", f"{root}/data", "-l", f"{root}/log", "-w", "start", "-o",
                               f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"],
                   check=True, stdout=subprocess.DEVNULL)

    def stop():
        subprocess.run(as_owner + [f"{bindir}/pg_ctl", "-D", f"{root}/data", "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, check=False)
        shutil.rmtree(root, ignore_errors=True)
    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres", stop


@pytest.fixture(scope="session")
def pg_admin_dsn():
    """Admin DSN of a real server: FUSION_TEST_PG_DSN (.ci/run) or a cluster started here."""
    if os.environ.get("FUSION_TEST_PG_DSN"):
        yield os.environ["FUSION_TEST_PG_DSN"]
        return
    dsn, stop = _start_cluster()
    try:
        yield dsn
    finally:
        stop()


@pytest.fixture
def source_db(pg_admin_dsn):
    """A fresh NexaCloud-shaped database with every messy case and the README's read-only role.

    Yields ``{"admin": dsn, "ro": dsn, "role", "password", "database"}``; dropped afterwards.
    """
    import psycopg2
    import psycopg2.extensions
    from core import nexacloud_sample

    name = f"nexacloud_test_{uuid.uuid4().hex[:10]}"
    role, password = f"ro_{uuid.uuid4().hex[:8]}", "s3cr#t:p@ss/" + uuid.uuid4().hex[:6]
    admin = psycopg2.connect(pg_admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    params = psycopg2.extensions.parse_dsn(pg_admin_dsn)
    db_admin_dsn = psycopg2.extensions.make_dsn(pg_admin_dsn, dbname=name)
    with psycopg2.connect(db_admin_dsn) as connection, connection.cursor() as cursor:
        nexacloud_sample.load_messy_sample(cursor)
        nexacloud_sample.create_read_only_role(cursor, role, password, name)
    connection.close()
    ro_dsn = psycopg2.extensions.make_dsn(
        host=params.get("host", "127.0.0.1"), port=params.get("port", "5432"), dbname=name, user=role,
        password=password)
    try:
        yield {"admin": db_admin_dsn, "ro": ro_dsn, "role": role, "password": password, "database": name}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cursor.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
