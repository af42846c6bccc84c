import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from functools import partial
from unittest.mock import patch

import psycopg2
from psycopg2.extensions import make_dsn

from odoo import SUPERUSER_ID, Command, api
from odoo.orm.environments import Transaction
from odoo.sql_db import db_connect
from odoo.tests import HttpCase, TransactionCase, new_test_user
from odoo.tools import config

from freezegun import freeze_time

from odoo.addons.fusion_centralize_billing.core import nexacloud_sample


def load_migration(version, name):
    """The module of this addon's ``migrations/<version>/post-migrate.py``, loaded as ``name`` (its logger's
    name when it logs through ``__name__``), so that a test can call its ``migrate(cr, installed_version)``."""
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "migrations", version, "post-migrate.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def real_cursor(registry, readonly=False):
    """A cursor on a real database connection (not the test's), as ``registry.cursor()`` gives
    an Odoo worker; it has its own transaction, as the registry lock is held by the test runner."""
    cr = db_connect(registry.db_name).cursor()
    cr.transaction = Transaction(registry)
    return cr


@contextmanager
def real_session(env):
    """A real database session, as another Odoo worker has: its work is committed on exit and
    seen by other sessions (the test's own transaction is never committed)."""
    cr = real_cursor(env.registry)
    try:
        yield api.Environment(cr, SUPERUSER_ID, {"tracking_disable": True, "fc_real_transactions": True})
        cr.commit()
    finally:
        cr.close()


def run_as_workers(env, job, workers=2, timeout=300):
    """Run ``job(env)`` in ``workers`` real sessions at once, as concurrent Odoo workers (their
    post-commit hooks open real cursors too, as in production). Returns what they raised."""
    errors = []

    def work():
        try:
            with real_session(env) as worker_env:
                job(worker_env)
        except Exception as error:  # noqa: BLE001 (returned to the test, which asserts on it)
            errors.append(error)

    registry = env.registry
    with patch.object(registry, "cursor", partial(real_cursor, registry)):
        threads = [threading.Thread(target=work) for _ in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout)
    return errors


class OdooServer:
    """A real multi-process Odoo server (``--workers``), as production runs it, on the test's own
    database: it serves only what is committed (set data up with :func:`real_session`), each
    request in its own worker process and transaction, with Odoo's request replays on conflicts.

    ``with OdooServer(env, workers=2) as server:`` → ``server.url`` (``http://127.0.0.1:<port>``);
    ``server.log()`` is its log so far (retries are logged at INFO).
    """

    def __init__(self, env, workers=2, boot_timeout=180):
        self.db_name = env.registry.db_name
        self.workers = workers
        self.boot_timeout = boot_timeout
        self.process = None

    def __enter__(self):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        addons = config["addons_path"]
        options = ["-d", self.db_name, f"--addons-path={','.join(addons) if isinstance(addons, list) else addons}",
                   f"--data-dir={config['data_dir']}", f"--workers={self.workers}", "--max-cron-threads=0",
                   "--http-interface=127.0.0.1", f"--http-port={self.port}", "--log-level=info",
                   "--limit-time-real=300", "--limit-time-cpu=300"]
        options += [f"--{key}={config[key]}" for key in ("db_host", "db_port", "db_user", "db_password") if config.get(key)]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            options.append(f"--gevent-port={probe.getsockname()[1]}")  # not 8072: other servers may run
        self._dir = tempfile.mkdtemp(prefix="fusion-billing-server-")
        # A launcher file: the master re-runs sys.argv[0] for its websocket (gevent) process.
        launcher = os.path.join(self._dir, "odoo-server.py")
        with open(launcher, "w", encoding="utf-8") as handle:
            handle.write("import odoo.cli\nodoo.cli.main()\n")
        self._log = open(os.path.join(self._dir, "server.log"), "w+", encoding="utf-8")  # noqa: SIM115
        self.process = subprocess.Popen([sys.executable, launcher, "server"] + options,
                                        stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_serving()
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_until_serving(self):
        deadline = time.monotonic() + self.boot_timeout
        import requests  # noqa: PLC0415 (test-only dependency)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Odoo server exited ({self.process.returncode}):\n{self.log()[-3000:]}")
            try:
                if requests.get(f"{self.url}/api/billing/v1/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Odoo server did not answer within {self.boot_timeout} s:\n{self.log()[-3000:]}")

    def log(self):
        with open(self._log.name, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def __exit__(self, *_exc):
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the master and its workers (own session)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self._log.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        return False


def committed_catalog(env, name, aggregation="sum", **service_values):
    """A service (a unique code from ``name``) with one metric ``calls`` (a sum over ``n``, or
    ``aggregation``), a monthly plan of 10.00 and a standard charge of 1.00 per unit, created in
    ``env`` (a real session's, so that other sessions see them once it commits)."""
    code = f"{name.lower().replace(' ', '_')}_{uuid.uuid4().hex[:8]}"
    service = env["fusion.billing.service"].create({"name": name, "code": code, **service_values})
    metric = env["fusion.billing.metric"].create({
        "service_id": service.id, "code": "calls", "name": "Calls", "aggregation": aggregation,
        **({"field_name": "n"} if aggregation != "count" else {})})
    product = env["product.product"].create({"name": f"{name} plan", "type": "service", "recurring_invoice": True})
    plan = env["sale.subscription.plan"].create({
        "name": name, "x_fc_service_id": service.id, "x_fc_plan_code": code, "x_fc_amount": 10,
        "x_fc_product_id": product.id})
    env["fusion.billing.charge"].create({"service_id": service.id, "plan_id": plan.id, "metric_id": metric.id,
                                         "charge_model": "standard", "properties": {"amount": "1"}})
    return service, metric, product, plan


def remove_committed(env, ids):
    """Remove what a test committed in real sessions (``env``, a real session's) with
    :func:`committed_catalog`: ``ids`` holds ``service``, ``metric``, ``orders`` and ``catalog``
    (``(model, id)`` pairs), and ``more_services`` if the test made more. The subscriptions'
    invoices are the caller's to remove first."""
    cr, orders = env.cr, tuple(ids["orders"])
    services = [ids["service"], *ids.get("more_services", [])]
    cr.execute("DELETE FROM fusion_billing_usage_delta WHERE subscription_id IN %s", [orders])
    cr.execute("DELETE FROM fusion_billing_usage WHERE subscription_id IN %s", [orders])
    for table in ("fusion_billing_event", "fusion_billing_webhook", "fusion_billing_charge",
                  "fusion_billing_activation_run"):
        cr.execute(f"DELETE FROM {table} WHERE service_id = ANY(%s)", [services])  # noqa: S608
    cr.execute("DELETE FROM sale_order WHERE id IN %s", [orders])
    for model, record_id in ids["catalog"]:
        env[model].browse(record_id).unlink()
    env["fusion.billing.metric"].browse(ids["metric"]).unlink()
    env["fusion.billing.service"].browse(services).active = False


class FusionBillingFixtures:
    """Shared fixtures: a CAD service with a metric, a catalog plan with a usage charge,
    and users of each Fusion Billing group."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.cad = cls.env.ref("base.CAD")
        cls.env.company.currency_id = cls.cad  # a Canadian company, as in production
        cls.billing_user = new_test_user(
            cls.env, "fc_billing_user", groups="fusion_centralize_billing.group_fusion_billing_user")
        cls.billing_admin = new_test_user(
            cls.env, "fc_billing_admin", groups="fusion_centralize_billing.group_fusion_billing_manager")
        cls.plain_user = new_test_user(cls.env, "fc_plain_user", groups="base.group_user")
        cls.service = cls._create_service("NexaCloud", "nexacloud")
        cls.metric_bandwidth = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service.id, "name": "Bandwidth", "code": "bandwidth_gb",
            "aggregation": "sum", "field_name": "gb",
        })
        cls.base_product = cls.env["product.product"].create({
            "name": "NexaCloud Pro", "type": "service", "list_price": 49.0, "recurring_invoice": True,
        })
        cls.plan = cls.env["sale.subscription.plan"].create({
            "name": "NexaCloud Pro (monthly)", "billing_period_value": 1, "billing_period_unit": "month",
            "x_fc_service_id": cls.service.id, "x_fc_plan_code": "pro", "x_fc_amount": 49.0,
            "x_fc_currency_id": cls.cad.id, "x_fc_product_id": cls.base_product.id,
        })
        cls.charge = cls.env["fusion.billing.charge"].create({
            "service_id": cls.service.id, "plan_id": cls.plan.id, "plan_code": "pro",
            "metric_id": cls.metric_bandwidth.id, "included_quantity": 100,
            "charge_model": "standard", "properties": {"amount": "0.05"},
        })
        cls.partner = cls.env["res.partner"].create({"name": "Maple Leaf Hosting Inc.", "email": "ops@mapleleaf.ca"})

    @classmethod
    def _create_service(cls, name, code, **values):
        return cls.env["fusion.billing.service"].create({"name": name, "code": code, "currency_id": cls.cad.id, **values})

    @classmethod
    def _create_subscription(cls, partner=None, plan=None, external_id="sub_1", service=None, **values):
        plan = plan or cls.plan
        return cls.env["sale.order"].create({
            "partner_id": (partner or cls.partner).id,
            "pricelist_id": (service or cls.service)._fc_pricelist().id,
            "plan_id": plan.id,
            "x_fc_service_id": (service or cls.service).id,
            "x_fc_external_id": external_id,
            "order_line": [Command.create({"product_id": plan.x_fc_product_id.id, "price_unit": plan.x_fc_amount})],
            **values,
        })

    @classmethod
    def _confirmed_app_subscription(cls, customer, email, name, external_id, **values):
        """A live service's confirmed subscription started on 2026-11-01 for a new app account,
        as the API makes it: ``(account link, order)``."""
        cls.service.billing_mode = "live"
        link = cls.env["fusion.billing.account.link"]._api_upsert(
            cls.service, {"external_id": customer, "email": email, "name": name})
        order = cls._create_subscription(partner=link.partner_id, external_id=external_id,
                                         x_fc_account_link_id=link.id, start_date="2026-11-01", **values)
        order.action_confirm()
        return link, order

    @classmethod
    def _api_key(cls, service):
        return service.with_user(cls.billing_admin).action_generate_api_key()["context"]["default_key"]

    def activate_subscriptions(self, user=None, service=None):
        """Press *Activate Subscriptions* (it only queues a run), then let the background job run it,
        as the scheduler would. Returns the run (``fusion.billing.activation.run``: one line per draft)."""
        service = service or self.service
        service.with_user(user or self.billing_admin).action_activate_subscriptions()
        run = self.env["fusion.billing.activation.run"].search([("service_id", "=", service.id)], limit=1)
        self.assertEqual(run.state, "queued", "the button confirms nothing itself")
        self.env["fusion.billing.activation.run"]._cron_run_queued()
        self.assertEqual(run.state, "done", run.error)
        return run


class FusionBillingCase(FusionBillingFixtures, TransactionCase):
    """ORM-level tests."""


class FusionBillingApiCase(FusionBillingFixtures, HttpCase):
    """HTTP tests of the Lago-compatible API, authenticated with a fresh key of ``service``."""

    API = "/api/billing/v1"
    API_PY = "/api/billing/api/v1"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.plaintext = cls._api_key(cls.service)
        cls.auth = {"Authorization": f"Bearer {cls.plaintext}"}

    @contextmanager
    def outside_client(self):
        """Let clients other than url_open (official Lago client, threads) reach the test server."""
        self.env.flush_all()
        with self.allow_requests(all_requests=True):
            yield
        self.env.invalidate_all()

    def api(self, method, path, body=None, params=None, key=None):
        headers = {"Authorization": f"Bearer {key or self.plaintext}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        response = self.url_open(f"{self.API}/{path}", data=data, headers=headers, params=params,
                                 method=method, timeout=30)
        self.env.invalidate_all()
        return response


def ts(*args):
    """Unix timestamp of a UTC date and time (Lago events)."""
    return int(datetime(*args, tzinfo=timezone.utc).timestamp())


class UsageBillingFixtures:
    """A live service on the Pro plan (49.00 a month) with HST on the plan fee and on its two usage
    charges: bandwidth (100 GB included, then 0.05 a GB) and API calls (2.00 per started pair)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.hst = cls.env["account.tax"].create({
            "name": "HST 13%", "amount": 13, "amount_type": "percent", "type_tax_use": "sale",
            "company_id": cls.env.company.id})
        cls.usage_product = cls.env["product.product"].create({
            "name": "NexaCloud usage", "type": "service", "taxes_id": [Command.set(cls.hst.ids)]})
        cls.base_product.taxes_id = [Command.set(cls.hst.ids)]
        cls.charge.product_id = cls.usage_product
        cls.metric_calls = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service.id, "name": "API calls", "code": "api_calls", "aggregation": "count"})
        cls.charge_calls = cls.env["fusion.billing.charge"].create({
            "service_id": cls.service.id, "plan_id": cls.plan.id, "plan_code": "pro", "metric_id": cls.metric_calls.id,
            "charge_model": "package", "properties": {"amount": "2", "package_size": 2, "free_units": 0},
            "product_id": cls.usage_product.id,
        })
        cls.service.billing_mode = "live"

    # ------------------------------------------------------------------ the app's calls
    def charged_metric(self, code, name, aggregation, field_name=None):
        """A metric of the service priced on the Pro plan at 1.00 a unit (no quantity included)."""
        metric = self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": name, "code": code, "aggregation": aggregation,
            **({"field_name": field_name} if field_name else {})})
        self.env["fusion.billing.charge"].create({
            "service_id": self.service.id, "plan_id": self.plan.id, "plan_code": "pro", "metric_id": metric.id,
            "charge_model": "standard", "properties": {"amount": "1"}, "product_id": self.usage_product.id})
        return metric

    def subscribe(self, external_id="sub_jan", customer="cus_jan", plan_code="pro", day="2025-01-01"):
        """``POST /subscriptions`` on ``day`` (the subscription starts that day)."""
        with freeze_time(day):
            response = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": customer, "plan_code": plan_code, "external_id": external_id}})
        self.assertEqual(response.status_code, 200, response.text)
        return self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))

    def push_january(self, external_id="sub_jan", prefix=""):
        """250 GB (7.50 above the quota) and 5 API calls (6.00) in January 2025: 13.50 before tax."""
        events = [{"transaction_id": f"{prefix}bw{i}", "external_subscription_id": external_id, "code": "bandwidth_gb",
                   "timestamp": ts(2025, 1, 10 + i), "properties": {"gb": gb}}
                  for i, gb in enumerate((100, "120.5", "29.5"))]
        events += [{"transaction_id": f"{prefix}call{i}", "external_subscription_id": external_id,
                    "code": "api_calls", "timestamp": ts(2025, 1, 20, 12, i)} for i in range(5)]
        response = self.api("POST", "events/batch", {"events": events})
        self.assertEqual(response.status_code, 200, response.text)

    def push(self, external_id, transaction_id, when, gb):
        response = self.api("POST", "events", {"event": {
            "transaction_id": transaction_id, "external_subscription_id": external_id, "code": "bandwidth_gb",
            "timestamp": ts(*when), "properties": {"gb": gb}}})
        self.assertEqual(response.status_code, 200, response.text)
        return response.json()["event"]

    # ------------------------------------------------------------------ Odoo's scheduled actions
    def recurring(self, day):
        """The native scheduled action "generate recurring invoices and payments" on ``day``."""
        with freeze_time(day):
            self.env["sale.order"]._cron_recurring_create_invoice()
        self.env.invalidate_all()

    def close(self, day):
        """Our usage job (shadow services, final periods, set-aside subscriptions) on ``day``."""
        with freeze_time(day):
            self.env["sale.order"]._cron_close_usage_periods()
        self.env.invalidate_all()

    # ------------------------------------------------------------------ payments (Stripe is never called)
    def stripe_token(self, partner):
        provider = self.env.ref("payment.payment_provider_stripe")
        provider.write({"state": "test", "stripe_secret_key": "sk_test_fusion", "stripe_publishable_key": "pk_test_fusion"})
        return self.env["payment.token"].create({
            "provider_id": provider.id, "payment_method_id": self.env.ref("payment.payment_method_card").id,
            "partner_id": partner.id, "provider_ref": "cus_test", "stripe_payment_method": "pm_test",
            "payment_details": "4242"})

    @contextmanager
    def card_answers(self, outcome):
        """What the card network answers to every charge: ``done`` or ``declined``."""
        def answer(tx):
            if outcome == "done":
                tx._set_done()
            else:
                tx._set_error("Your card was declined.")
        with patch.object(type(self.env["payment.transaction"]), "_send_payment_request", answer):
            yield


class UsageBillingCase(UsageBillingFixtures, FusionBillingApiCase):
    """API, usage and the native recurring run together."""


class NexacloudSource:
    """Each test gets a real NexaCloud-shaped source database (every messy case of the contract)
    on Odoo's own PostgreSQL server, read through the README's least-privilege role, and the
    ``fusion_billing.nexacloud_dsn`` parameter pointing at it. Dropped afterwards."""

    def setUp(self):
        super().setUp()
        server = {key: config[f"db_{key}"] for key in ("host", "port", "user", "password") if config.get(f"db_{key}")}
        server.setdefault("host", "127.0.0.1")
        self.admin_dsn = make_dsn(dbname="postgres", **server)
        self.database = f"nexacloud_src_{uuid.uuid4().hex[:8]}"
        self.role, self.password = f"ro_{uuid.uuid4().hex[:8]}", f"pw:{uuid.uuid4().hex[:10]}@/"
        self.admin_sql(f'CREATE DATABASE "{self.database}"', database="postgres")
        self.addCleanup(self.admin_sql, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE); '
                                        f'DROP ROLE IF EXISTS "{self.role}"', database="postgres")
        with self.source_cursor() as cursor:
            nexacloud_sample.load_messy_sample(cursor)
            nexacloud_sample.create_read_only_role(cursor, self.role, self.password, self.database)
        self.ro_dsn = make_dsn(host=server["host"], port=server.get("port", 5432), dbname=self.database,
                               user=self.role, password=self.password)
        self.set_dsn(self.ro_dsn)
        # A NexaDesk customer already known to Odoo, with the e-mail of NexaCloud user 8.
        self.desk_partner = self.env["res.partner"].create({"name": "Dana (NexaDesk)", "email": "desk.customer@example.com",
                                                            "customer_rank": 1})

    def admin_sql(self, sql, database=None):
        """Run ``;``-separated statements as the server admin, each committed at once."""
        connection = psycopg2.connect(make_dsn(self.admin_dsn, dbname=database or self.database))
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                for statement in filter(None, (s.strip() for s in sql.split(";"))):
                    cursor.execute(statement)
        finally:
            connection.close()

    def source_snapshot(self):
        with self.source_cursor() as cursor:
            snapshot = {}
            for table in ("users", "plans", "subscriptions", "deployments"):
                cursor.execute(f"SELECT * FROM {table} ORDER BY id")
                snapshot[table] = cursor.fetchall()
        return snapshot

    def set_dsn(self, dsn):
        self.env["ir.config_parameter"].sudo().set_param("fusion_billing.nexacloud_dsn", dsn)

    @contextmanager
    def source_cursor(self):
        """A committed admin cursor on the source database."""
        connection = psycopg2.connect(make_dsn(self.admin_dsn, dbname=self.database))
        try:
            with connection, connection.cursor() as cursor:
                yield cursor
        finally:
            connection.close()

    def run_import(self, dry_run=False, user=None):
        """Press Run Import, then let the background job run it (as the scheduler would).
        Returns the run (``fusion.billing.import.run``, the history record: banner, counts, rows)."""
        wizard = self.env["fusion.billing.nexacloud.import"].with_user(user or self.billing_admin).create(
            {"dry_run": dry_run})
        wizard.action_run_import()
        run = wizard.run_id
        self.assertEqual(run.state, "queued")
        self.env["fusion.billing.import.run"]._cron_run_queued()
        self.assertEqual(run.state, "done", run.error)
        return run


class NexacloudSourceCase(NexacloudSource, FusionBillingCase):
    """ORM-level tests against a real NexaCloud source (see NexacloudSource)."""


class NexacloudSourceHttpCase(NexacloudSource, FusionBillingFixtures, HttpCase):
    """HTTP (JSON-RPC) tests against a real NexaCloud source (see NexacloudSource)."""
