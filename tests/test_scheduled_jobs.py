"""Our jobs under Odoo's real scheduler (``ir.cron._process_job``): a run gets a short time budget
(``MIN_TIME_PER_JOB``) after which ``_commit_progress`` answers "no time left". A job that stops
then must say that work remains, so Odoo runs it again at once instead of at its next interval;
and our hook inside Odoo's own recurring job must never make that job skip its invoicing.

Everything is committed in real sessions (as workers see it) and removed afterwards; the time
budget is cut to zero so that the limit is reached after the first batch.

Every job isolates a bad record: one poisoned record (or app) among good ones is set aside where a
person sees it, the good ones are done and committed, and the bad one is not retried forever.
"""
import json
from ast import literal_eval
from datetime import date, timedelta
from functools import partial
from unittest.mock import patch

from odoo import Command, fields
from odoo.exceptions import AccessError
from odoo.addons.base.models import ir_cron
from odoo.tests import TransactionCase, tagged
from odoo.tools import mute_logger

from ..core import periods
from ..models.fusion_billing_webhook import EVENTS_ERRORS_ATTEMPTS, EVENTS_ERRORS_MAX_IDS, OVERDUE_ATTEMPTS
from ..services import billing_cycle
from .common import FusionBillingCase, committed_catalog, real_cursor, real_session, remove_committed

CYCLE_LOG = "odoo.addons.fusion_centralize_billing.services.billing_cycle"
WEBHOOK_LOG = "odoo.addons.fusion_centralize_billing.models.fusion_billing_webhook"


class CommittedJobsCase(TransactionCase):
    """A committed service with ``SUBSCRIPTIONS`` subscriptions, removed after each test, and a way to
    run a job as Odoo's cron worker does."""

    SUBSCRIPTIONS = 14

    def setUp(self):
        super().setUp()
        today = date.today()
        self.start = periods.add_period(today, "month", 1, -1)
        with real_session(self.env) as env:
            service, metric, product, plan = committed_catalog(env, "Jobs", aggregation="count")
            partner = env["res.partner"].create({"name": "Jobs client"})
            orders = env["sale.order"].create([{
                "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": f"jobs-{n}", "pricelist_id": service._fc_pricelist().id,
                "start_date": self.start, "order_line": [Command.create(plan._fc_base_fee_line_values())],
            } for n in range(self.SUBSCRIPTIONS)])
            self.ids = {"service": service.id, "orders": orders.ids, "partner": partner.id, "crons": [],
                        "catalog": [("sale.subscription.plan", plan.id), ("product.product", product.id)],
                        "metric": metric.id}
        self.addCleanup(self._remove_committed)

    def _remove_committed(self):
        with real_session(self.env) as env:
            cr, orders = env.cr, tuple(self.ids["orders"])
            cr.execute("DELETE FROM ir_cron WHERE id = ANY(%s)", [self.ids["crons"]])
            cr.execute("SELECT DISTINCT move_id FROM account_move_line WHERE id IN ("
                       "SELECT invoice_line_id FROM sale_order_line_invoice_rel rel JOIN sale_order_line line "
                       "ON line.id = rel.order_line_id WHERE line.order_id IN %s)", [orders])
            moves = env["account.move"].browse([row[0] for row in cr.fetchall()] + self.ids.get("moves", []))
            moves.filtered(lambda m: m.state == "posted").button_draft()
            moves.with_context(force_delete=True).unlink()
            remove_committed(env, self.ids)

    def _cron(self, env, code):
        cron = env["ir.cron"].create({
            "name": f"test {code}", "model_id": env["ir.model"]._get_id("sale.order"), "state": "code",
            "code": code, "interval_number": 1, "interval_type": "hours", "user_id": env.ref("base.user_root").id})
        self.ids["crons"].append(cron.id)
        return cron.id

    def run_under_scheduler(self, code):
        """Run ``code`` as a scheduled job, the way Odoo's cron worker does, with no time to spare."""
        registry = self.registry
        with real_session(self.env) as env:
            cron_id = self._cron(env, code)
        with patch.object(registry, "cursor", partial(real_cursor, registry)), \
                patch.object(ir_cron, "MIN_TIME_PER_JOB", 0):
            cron_cr = real_cursor(registry)
            try:
                IrCron = type(self.env["ir.cron"])  # the registry's class (it knows its pool)
                job = IrCron._acquire_one_job(cron_cr, cron_id, include_not_ready=True)
                IrCron._process_job(cron_cr, job)
                cron_cr.commit()
            finally:
                cron_cr.close()
        with real_session(self.env) as env:
            env.cr.execute("SELECT count(*) FROM ir_cron_trigger WHERE cron_id = %s", [cron_id])
            asap = env.cr.fetchone()[0]
            env.cr.execute("SELECT count(*) FROM sale_order WHERE id = ANY(%s) AND x_fc_usage_due_date <= %s",
                           [self.ids["orders"], date.today()])
            due = env.cr.fetchone()[0]
        return asap, due


@tagged("post_install", "-at_install")
class TestJobsUnderTheScheduler(CommittedJobsCase):

    def test_a_job_out_of_time_runs_again_at_once(self):
        """Shadow subscriptions closed by our job, one per batch: Odoo runs the job ten times (its
        minimum), each closing one batch, then schedules it again at once, since work remains."""
        asap, due = self.run_under_scheduler(
            "model.with_context(fc_real_transactions=True)._cron_close_usage_periods(batch_size=1)")
        self.assertEqual(due, self.SUBSCRIPTIONS - ir_cron.MIN_RUNS_PER_JOB, "one batch per run of the job")
        self.assertTrue(asap, "work remains: the job is called again at once, not an hour later")

    def test_the_activation_job_out_of_time_keeps_its_batches_and_runs_again_at_once(self):
        """Activate Subscriptions at cutover, one draft per batch: each run of the job commits its
        batch; out of time, the job says work remains, so Odoo runs it again at once."""
        with real_session(self.env) as env:
            service = env["fusion.billing.service"].browse(self.ids["service"])
            service.billing_mode = "live"
            service.action_activate_subscriptions()
        asap, _due = self.run_under_scheduler("env['fusion.billing.activation.run'].with_context("
                                              "fc_real_transactions=True)._cron_run_queued(batch_size=1)")
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(self.ids["orders"])
            run = env["fusion.billing.activation.run"].search([("service_id", "=", self.ids["service"])])
            self.assertEqual(len(orders.filtered(lambda o: o.state == "sale")), ir_cron.MIN_RUNS_PER_JOB,
                             "one committed batch per run of the job")
            self.assertEqual((run.state, len(run.line_ids)), ("queued", ir_cron.MIN_RUNS_PER_JOB))
        self.assertTrue(asap, "work remains: the job is called again at once, not in ten minutes")

    def test_the_recurring_job_invoices_even_when_closing_usage_took_its_time(self):
        """Live subscriptions due today: Odoo's recurring job (our hook closes their usage first, a
        small batch at a time here) must still invoice them all in the same run."""
        with real_session(self.env) as env:
            env["fusion.billing.service"].browse(self.ids["service"]).billing_mode = "live"
            orders = env["sale.order"].browse(self.ids["orders"])
            orders.action_confirm()
            orders.write({"next_invoice_date": date.today(), "last_invoice_date": self.start})
        with patch.object(billing_cycle, "BATCH_SIZE", 2):
            self.run_under_scheduler("model.with_context(fc_real_transactions=True)._cron_recurring_create_invoice()")
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(self.ids["orders"])
            self.assertEqual(orders.mapped("next_invoice_date"), [periods.add_period(date.today(), "month", 1)] *
                             self.SUBSCRIPTIONS, "every due subscription invoiced")
            self.assertFalse(orders.filtered(lambda o: o.x_fc_usage_due_date and o.x_fc_usage_due_date <= date.today()))


@tagged("post_install", "-at_install")
class TestJobsIsolateABadRecord(CommittedJobsCase):
    """One poisoned record among good ones, under Odoo's real scheduler: the good ones are done and
    committed, the bad one is set aside where a person sees it, and it is not retried forever."""

    def test_the_fold_sets_aside_a_subscription_it_cannot_fold(self):
        """Deltas of every subscription, and one subscription whose deltas cannot be folded (a metric
        whose aggregation this version no longer knows): was, the whole batch of 500 failed and the
        job picked the same batch up every five minutes, folding nothing."""
        orders, period = self.ids["orders"], (self.start, periods.add_period(self.start, "month", 1))
        poisoned = orders[3]
        with real_session(self.env) as env:
            retired = env["fusion.billing.metric"].create({
                "service_id": self.ids["service"], "code": "retired", "name": "Retired", "aggregation": "count"})
            self.ids["catalog"].append(("fusion.billing.metric", retired.id))
            env.cr.execute("UPDATE fusion_billing_metric SET aggregation = 'retired_kind', field_name = 'n' WHERE id = %s", [retired.id])
            deltas = [(order, self.ids["metric"]) for order in orders] + [(poisoned, retired.id)] * 2
            env.cr.executemany("""
                INSERT INTO fusion_billing_usage_delta (subscription_id, service_id, metric_id, period_start,
                            period_end, quantity, events_count, last_event_at, event_ids)
                VALUES (%s, %s, %s, %s, %s, 2, 2, now() at time zone 'UTC', '[]')""",
                               [(order, self.ids["service"], metric, *period) for order, metric in deltas])
        with mute_logger(CYCLE_LOG):
            self.run_under_scheduler(
                "env['fusion.billing.usage'].with_context(fc_real_transactions=True)._cron_fold(batch_size=5)")

        with real_session(self.env) as env:
            env.cr.execute("SELECT DISTINCT subscription_id FROM fusion_billing_usage_delta WHERE subscription_id = ANY(%s)",
                           [orders])
            self.assertEqual([row[0] for row in env.cr.fetchall()], [poisoned], "every other subscription folded")
            env.cr.execute("SELECT subscription_id, quantity FROM fusion_billing_usage WHERE metric_id = %s",
                           [self.ids["metric"]])
            self.assertEqual(dict(env.cr.fetchall()), {order: 2.0 for order in orders if order != poisoned},
                             "and committed (the poisoned one's good metric waits with it: one fold per subscription)")
            order = env["sale.order"].browse(poisoned)
            self.assertIn("retired_kind", order.x_fc_billing_issue, "its reason, on the subscription")
            self.assertGreaterEqual(order.x_fc_billing_attempts, 1)
            attention = env["sale.order"].search(
                literal_eval(env.ref("fusion_centralize_billing.sale_order_action_needs_attention").domain))
            self.assertIn(order, attention, "listed under Needs Attention")

        # Every five minutes, but not forever: set aside MAX_BILLING_ATTEMPTS times, it is left to a person.
        with real_session(self.env) as env, mute_logger(CYCLE_LOG):
            for _run in range(billing_cycle.MAX_BILLING_ATTEMPTS + 2):
                env["fusion.billing.usage"]._cron_fold()
            self.assertEqual(env["sale.order"].browse(poisoned).x_fc_billing_attempts, billing_cycle.MAX_BILLING_ATTEMPTS)

    def test_the_events_errors_digest_commits_each_app_on_its_own(self):
        """Three apps with unbillable events, one whose digest cannot be built: the others' digests
        are committed (was: one transaction for all apps, rolled back by the failure every hour)."""
        with real_session(self.env) as env:
            more = env["fusion.billing.service"].create([
                {"name": f"Digest {n}", "code": f"digest_{n}_{self.ids['service']}"} for n in range(2)])
            self.ids["more_services"] = more.ids
            apps = env["fusion.billing.service"].browse([self.ids["service"], *more.ids])
            env["fusion.billing.event"].create([{
                "service_id": app.id, "transaction_id": f"tx{app.id}", "external_subscription_id": "nobody",
                "code": "calls", "timestamp": fields.Datetime.now(), "fingerprint": "f", "state": "unknown_subscription"}
                for app in apps])
            env.cr.execute("UPDATE fusion_billing_service SET create_date = create_date - interval '1 day' WHERE id = ANY(%s)",
                           [apps.ids])
            env.cr.execute("UPDATE fusion_billing_event SET create_date = create_date - interval '10 minutes' "
                           "WHERE service_id = ANY(%s)", [apps.ids])
        poisoned = more[0].id
        Webhook = type(self.env["fusion.billing.webhook"])
        enqueue = Webhook._enqueue

        def failing(model, service, webhook_type, record=None, obj=None):
            if service.id == poisoned:
                raise ValueError("a digest that cannot be built")
            return enqueue(model, service, webhook_type, record, obj)

        with patch.object(Webhook, "_enqueue", failing), mute_logger(WEBHOOK_LOG):
            self.run_under_scheduler("env['fusion.billing.webhook'].with_context(fc_real_transactions=True)"
                                     "._cron_events_errors()")
        with real_session(self.env) as env:
            env.cr.execute("SELECT service_id, payload::json #>> '{events_errors,unknown_subscription,0}' "
                           "FROM fusion_billing_webhook WHERE event_type = 'events.errors' AND service_id = ANY(%s)",
                           [[self.ids["service"], *more.ids]])
            self.assertEqual(dict(env.cr.fetchall()), {self.ids["service"]: f"tx{self.ids['service']}",
                                                       more[1].id: f"tx{more[1].id}"}, "committed")
            failed = env["fusion.billing.service"].browse(poisoned)
            self.assertEqual(failed.events_errors_failures, 1, "its failure committed too, with its note")
            self.assertIn("a digest that cannot be built", failed.message_ids[0].body)

    def test_a_service_changed_meanwhile_gets_its_digest_the_next_hour(self):
        """A person saves the service while its hourly digest is built: a conflict, not a failure
        (no note, not counted towards skipping its window); the next run sends the digest."""
        service_id = self.ids["service"]
        with real_session(self.env) as env:
            env["fusion.billing.event"].create({
                "service_id": service_id, "transaction_id": "tx-busy", "external_subscription_id": "nobody",
                "code": "calls", "timestamp": fields.Datetime.now(), "fingerprint": "f", "state": "unknown_subscription"})
            env.cr.execute("UPDATE fusion_billing_service SET create_date = create_date - interval '1 day' WHERE id = %s",
                           [service_id])
            env.cr.execute("UPDATE fusion_billing_event SET create_date = create_date - interval '10 minutes' "
                           "WHERE service_id = %s", [service_id])
        Webhook = type(self.env["fusion.billing.webhook"])
        enqueue = Webhook._enqueue

        def saved_meanwhile(model, service, webhook_type, record=None, obj=None):
            if service.id == service_id and webhook_type == "events.errors":
                with real_session(self.env) as person:
                    person.cr.execute("UPDATE fusion_billing_service SET webhook_event_types = 'events.errors' "
                                      "WHERE id = %s", [service_id])
            return enqueue(model, service, webhook_type, record, obj)

        with patch.object(Webhook, "_enqueue", saved_meanwhile), real_session(self.env) as env, \
                mute_logger(WEBHOOK_LOG, "odoo.sql_db"):
            env["fusion.billing.webhook"]._cron_events_errors()
        with real_session(self.env) as env:
            service = env["fusion.billing.service"].browse(service_id)
            digests = env["fusion.billing.webhook"].search([("service_id", "=", service_id),
                                                            ("event_type", "=", "events.errors")])
            self.assertEqual((len(digests), service.events_errors_failures), (0, 0), "no digest, no failure")
            self.assertFalse(service.message_ids.filtered(lambda m: "events.errors" in (m.body or "")))
            env["fusion.billing.webhook"]._cron_events_errors()
            sent = digests.search([("service_id", "=", service_id), ("event_type", "=", "events.errors")])
            self.assertEqual(json.loads(sent.payload)["events_errors"]["unknown_subscription"], ["tx-busy"],
                             "sent by the next run")

    def test_an_invoice_an_accountant_changes_meanwhile_waits_for_the_next_overdue_run(self):
        """An accountant saves an overdue invoice while the daily job runs: that invoice's notice
        conflicts (Odoo's REPEATABLE READ), which is no failure of the invoice: the others are
        notified, it is not counted as an attempt, and the next run notifies it (was: the job failed
        writing the failure onto the same row, and no invoice was notified)."""
        with real_session(self.env) as env:
            moves = env["account.move"].create([{
                "move_type": "out_invoice", "partner_id": self.ids["partner"], "x_fc_service_id": self.ids["service"],
                "invoice_date": date.today() - timedelta(days=40), "invoice_date_due": date.today() - timedelta(days=10),
                "invoice_line_ids": [Command.create({"name": f"Hosting {n}", "quantity": 1, "price_unit": 10.0,
                                                     "tax_ids": []})]} for n in range(3)])
            moves.action_post()
            self.ids["moves"] = moves.ids
        changed = moves.ids[1]
        Webhook = type(self.env["fusion.billing.webhook"])
        enqueue = Webhook._enqueue

        def accountant_saves_meanwhile(model, service, webhook_type, record=None, obj=None):
            if record and record.id == changed and webhook_type == "invoice.payment_overdue":
                with real_session(self.env) as accountant:
                    accountant.cr.execute("UPDATE account_move SET ref = 'promised by phone' WHERE id = %s", [changed])
            return enqueue(model, service, webhook_type, record, obj)

        with patch.object(Webhook, "_enqueue", accountant_saves_meanwhile), real_session(self.env) as env, \
                mute_logger(WEBHOOK_LOG, "odoo.sql_db"):
            env["fusion.billing.webhook"]._cron_payment_overdue()
        with real_session(self.env) as env:
            moves = env["account.move"].browse(self.ids["moves"])
            self.assertEqual(moves.mapped("x_fc_overdue_notified"), [True, False, True], "the others notified")
            self.assertEqual(moves.mapped("x_fc_overdue_attempts"), [0, 0, 0], "a conflict is no failed attempt")
            env["fusion.billing.webhook"]._cron_payment_overdue()
            self.assertTrue(moves[1].x_fc_overdue_notified, "notified by the next run")
            self.assertEqual(env["fusion.billing.webhook"].search_count([
                ("event_type", "=", "invoice.payment_overdue"), ("object_ref", "in", [f"account.move,{m}" for m in moves.ids])]), 3)


@tagged("post_install", "-at_install")
class TestNoticeJobsIsolateABadRecord(FusionBillingCase):
    """The webhook notices our jobs queue (each daily or hourly job commits at its end): one record
    whose notice cannot be built among good ones."""

    def overdue_invoices(self, count):
        moves = self.env["account.move"].create([{
            "move_type": "out_invoice", "partner_id": self.partner.id, "x_fc_service_id": self.service.id,
            "invoice_date": date.today() - timedelta(days=40), "invoice_date_due": date.today() - timedelta(days=10),
            "invoice_line_ids": [Command.create({"name": f"Hosting {n}", "quantity": 1, "price_unit": 10.0,
                                                 "tax_ids": []})]} for n in range(count)])
        moves.action_post()
        return moves

    def overdue_notices(self):
        return self.env["fusion.billing.webhook"].search(
            [("event_type", "=", "invoice.payment_overdue")]).mapped("object_ref")

    def test_an_overdue_notice_that_cannot_be_built_does_not_stop_the_others(self):
        """Was: the job raised, no invoice was notified, and every day it tried the same set again."""
        invoices = self.overdue_invoices(3)
        poisoned = invoices[1]
        Move = type(self.env["account.move"])
        build = Move._fc_webhook_object

        def failing(move):
            if move == poisoned:
                raise ValueError("an invoice line the app's format cannot express")
            return build(move)

        Webhook = self.env["fusion.billing.webhook"]
        with patch.object(Move, "_fc_webhook_object", failing), mute_logger(WEBHOOK_LOG):
            Webhook._cron_payment_overdue()
            self.assertEqual(sorted(self.overdue_notices()), sorted(f"account.move,{m.id}" for m in invoices - poisoned))
            self.assertEqual(invoices.mapped("x_fc_overdue_notified"), [True, False, True])
            self.assertEqual(poisoned.x_fc_overdue_attempts, 1)
            self.assertIn("could not be told that this invoice is overdue", poisoned.message_ids[0].body)
            self.assertIn("cannot express", poisoned.message_ids[0].body)
            self.assertFalse(poisoned.activity_ids, "retried tomorrow first")
            for _day in range(OVERDUE_ATTEMPTS + 2):
                Webhook._cron_payment_overdue()
        self.assertEqual(poisoned.x_fc_overdue_attempts, OVERDUE_ATTEMPTS, "not retried forever")
        self.assertEqual(len(poisoned.activity_ids), 1, "then left to a person, with a to-do")
        self.assertIn("Retry Overdue Notice", str(poisoned.activity_ids.note))
        self.assertEqual(len(self.overdue_notices()), 2, "the good ones notified once")

        # The cause fixed, a person retries it: the next run notifies it.
        with self.assertRaises(AccessError):
            poisoned.with_user(self.plain_user).action_fc_retry_overdue_notice()
        retry = self.env.ref("fusion_centralize_billing.account_move_action_retry_overdue_notice")
        self.assertEqual(retry.binding_model_id.model, "account.move")
        retry.with_user(self.billing_user).with_context(active_model="account.move", active_ids=poisoned.ids).run()
        Webhook._cron_payment_overdue()
        self.assertTrue(poisoned.x_fc_overdue_notified)
        self.assertEqual(len(self.overdue_notices()), 3)

    def unbillable(self, service, count, prefix, state="unknown_subscription"):
        self.env["fusion.billing.event"].create([{
            "service_id": service.id, "transaction_id": f"{prefix}{n}", "external_subscription_id": "nobody",
            "code": "calls", "timestamp": fields.Datetime.now(), "fingerprint": f"{prefix}{n}", "state": state}
            for n in range(count)])

    def digests(self, service):
        return [json.loads(webhook.payload)["events_errors"] for webhook in self.env["fusion.billing.webhook"].search(
            [("service_id", "=", service.id), ("event_type", "=", "events.errors")], order="id")]

    def digest_run(self, hours):
        with patch.object(fields.Datetime, "now", return_value=fields.Datetime.now() + timedelta(hours=hours)):
            self.env["fusion.billing.webhook"]._cron_events_errors()

    def test_the_events_errors_digest_is_bounded_and_each_app_is_on_its_own(self):
        """Three apps: one floods an unknown metric, one's digest cannot be built. Was: every
        unbillable event's id went into one webhook (a multi-megabyte row), and one app's failure
        stopped the digest of every app, every hour."""
        desk, maps = self._create_service("NexaDesk", "nexadesk"), self._create_service("NexaMaps", "nexamaps")
        apps = self.service | desk | maps
        self.env.cr.execute("UPDATE fusion_billing_service SET create_date = now() at time zone 'UTC' - interval '1 day' "
                            "WHERE id IN %s", [tuple(apps.ids)])
        apps.invalidate_recordset(["create_date"])
        self.unbillable(self.service, EVENTS_ERRORS_MAX_IDS + 100, "flood", state="unknown_metric")
        self.unbillable(self.service, 3, "cloud")
        for app in desk | maps:
            self.unbillable(app, 3, app.code)
        enqueue = type(self.env["fusion.billing.webhook"])._enqueue

        def failing(model, service, webhook_type, record=None, obj=None):
            if service == maps:
                raise ValueError("an organization id the signing cannot encode")
            return enqueue(model, service, webhook_type, record, obj)

        with patch.object(type(self.env["fusion.billing.webhook"]), "_enqueue", failing), mute_logger(WEBHOOK_LOG):
            self.digest_run(1)
            [flood] = self.digests(self.service)
            self.assertEqual(len(flood["invalid_code"]) + len(flood["unknown_subscription"]), EVENTS_ERRORS_MAX_IDS)
            self.assertEqual(flood["invalid_code"][:2], ["flood0", "flood1"], "the oldest first, as Lago lists them")
            self.assertEqual((flood["total_count"], flood["truncated"]), (EVENTS_ERRORS_MAX_IDS + 103, True))
            self.assertEqual((flood["missing_group_key"], flood["invalid_filter_values"]), ([], []))
            self.assertEqual(self.digests(desk), [{
                "invalid_code": [], "missing_aggregation_property": [], "missing_group_key": [],
                "invalid_filter_values": [], "unknown_subscription": ["nexadesk0", "nexadesk1", "nexadesk2"],
                "total_count": 3, "truncated": False}])
            self.assertEqual(self.digests(maps), [], "the failing app's digest rolled back alone")
            self.assertFalse(maps.events_errors_until, "and tried again next hour")
            self.assertIn("events.errors", maps.message_ids[0].body)
            self.assertIn("signing cannot encode", maps.message_ids[0].body)
            for hour in range(2, EVENTS_ERRORS_ATTEMPTS + 3):
                self.digest_run(hour)
        self.assertEqual((len(self.digests(self.service)), len(self.digests(desk))), (1, 1), "each reported once")
        self.assertTrue(maps.events_errors_until, "not retried forever: its window is skipped")
        told = maps.message_ids[0]
        self.assertIn("was skipped", told.body)
        self.assertIn("Unbillable Events", told.body, "its events stay listed")
        self.assertEqual(told.partner_ids, self.env["fusion.billing.webhook"]._fc_billing_team_member().partner_id,
                         "and a person told (notified in the inbox)")
        self.assertEqual(len(maps.message_ids.filtered(lambda m: "events.errors digest" in (m.body or ""))),
                         EVENTS_ERRORS_ATTEMPTS, "one note per failed run, then no more runs")

        self.unbillable(maps, 1, "later")  # an hour after the skipped window
        self.env.cr.execute("UPDATE fusion_billing_event SET create_date = %s WHERE transaction_id = 'later0'",
                            [fields.Datetime.now() + timedelta(hours=EVENTS_ERRORS_ATTEMPTS + 3)])
        self.digest_run(EVENTS_ERRORS_ATTEMPTS + 4)
        self.assertEqual([digest["unknown_subscription"] for digest in self.digests(maps)], [["later0"]])
