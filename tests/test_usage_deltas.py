"""Append-only usage: events sent while a period is being closed end up billed or late, never lost.

Real database sessions (committed, as Odoo workers have), interleaved on purpose: the ingest of
an event commits while the period close is running, after the close's snapshot.
"""
import json
import threading
from contextlib import contextmanager
from datetime import date, datetime, timezone
from functools import partial
from unittest.mock import patch

from odoo import Command
from odoo.tests import TransactionCase, tagged

from ..core import lago, periods
from .common import FusionBillingCase, committed_catalog, real_cursor, real_session, run_as_workers


class CommittedSubscription(TransactionCase):
    """A subscription committed in a real session, as real workers see it; nothing is written in
    the test's own transaction (the sessions could not see it)."""

    def setUp(self):
        super().setUp()
        self.start = periods.add_period(date.today().replace(day=1), "month", 1, -1)  # last month: due
        with real_session(self.env) as env:
            service, metric, product, plan = committed_catalog(env, "Deltas")
            partner = env["res.partner"].create({"name": "Deltas client"})
            order = env["sale.order"].create({
                "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": service.id,
                "x_fc_external_id": "deltas-sub", "pricelist_id": service._fc_pricelist().id,
                "start_date": self.start, "order_line": [Command.create({"product_id": product.id})]})
            self.ids = {"service": service.id, "order": order.id, "metric": metric.id,
                        "catalog": [("sale.subscription.plan", plan.id), ("product.product", product.id)]}
        self.addCleanup(self._remove_committed)

    def _remove_committed(self):
        with real_session(self.env) as env:
            cr = env.cr
            cr.execute("DELETE FROM fusion_billing_usage_delta WHERE subscription_id = %s", [self.ids["order"]])
            cr.execute("DELETE FROM fusion_billing_usage WHERE subscription_id = %s", [self.ids["order"]])
            for table in ("fusion_billing_event", "fusion_billing_webhook", "fusion_billing_charge"):
                cr.execute(f"DELETE FROM {table} WHERE service_id = %s", [self.ids["service"]])  # noqa: S608
            cr.execute("DELETE FROM sale_order WHERE id = %s", [self.ids["order"]])
            for model, record_id in self.ids["catalog"]:
                env[model].browse(record_id).unlink()
            env["fusion.billing.metric"].browse(self.ids["metric"]).unlink()
            env["fusion.billing.service"].browse(self.ids["service"]).active = False

    def ingest(self, transaction_id, units):
        """An events API call in its own session (its writes commit on their own, as in production)."""
        timestamp = datetime.combine(self.start.replace(day=20), datetime.min.time(), tzinfo=timezone.utc)
        clean = lago.validate_event({"transaction_id": transaction_id, "external_subscription_id": "deltas-sub",
                                     "code": "calls", "timestamp": int(timestamp.timestamp()),
                                     "properties": {"n": units}}, now=timestamp)
        with real_session(self.env) as env:
            [event] = env["fusion.billing.event"]._ingest(env["fusion.billing.service"].browse(self.ids["service"]),
                                                          [clean])
        return event["status"]

    def state_of(self, env):
        env.cr.execute("SELECT transaction_id, state FROM fusion_billing_event WHERE service_id = %s",
                       [self.ids["service"]])
        events = dict(env.cr.fetchall())
        env.cr.execute("SELECT quantity, events_count, state FROM fusion_billing_usage WHERE subscription_id = %s "
                       "AND period_start = %s", [self.ids["order"], self.start])
        return events, env.cr.fetchall()


@tagged("post_install", "-at_install")
class TestEventsDuringThePeriodClose(CommittedSubscription):

    def test_an_event_committed_during_the_close_is_billed_or_late_never_lost(self):
        registry = self.registry
        Usage = type(self.env["fusion.billing.usage"])
        original_fold, during_close = Usage._fc_fold, []

        def fold_while_an_event_arrives(model, subscription_ids):
            # The close has claimed the subscription (its snapshot is taken): an event commits now.
            if not during_close:
                during_close.append(self.ingest("during", 5))
            return original_fold(model, subscription_ids)

        with patch.object(registry, "cursor", partial(real_cursor, registry)):
            self.assertEqual(self.ingest("before", 2), "processed")
            with patch.object(Usage, "_fc_fold", fold_while_an_event_arrives), real_session(self.env) as env:
                env["sale.order"]._cron_close_usage_periods()
            self.assertEqual(during_close, ["processed"], "answered before the close committed")
            after = self.ingest("after", 7)
            with real_session(self.env) as env:
                env["fusion.billing.usage"]._cron_fold()  # the fold job, a few minutes later
            with real_session(self.env) as env:
                events, rows = self.state_of(env)
                env.cr.execute("SELECT count(*) FROM fusion_billing_usage_delta WHERE subscription_id = %s",
                               [self.ids["order"]])
                deltas_left = env.cr.fetchone()[0]

        self.assertEqual(after, "late", "the period was closed when it arrived")
        self.assertEqual(events, {"before": "processed", "during": "late", "after": "late"})
        self.assertEqual([(float(quantity), count, state) for quantity, count, state in rows], [(2.0, 1, "closed")],
                         "the close billed what it saw, and only that")
        self.assertEqual(deltas_left, 0, "every delta folded or turned into late events")

    def test_an_event_committed_before_the_close_is_billed(self):
        with patch.object(self.registry, "cursor", partial(real_cursor, self.registry)):
            self.ingest("first", 2)
            self.ingest("second", 3)
            with real_session(self.env) as env:
                usage = env["sale.order"].browse(self.ids["order"])._fc_usage_values(self.start)
                self.assertEqual(usage["charges_usage"][0]["units"], 5, "current usage counts the deltas")
                env["sale.order"]._cron_close_usage_periods()
            with real_session(self.env) as env:
                events, rows = self.state_of(env)
        self.assertEqual(events, {"first": "processed", "second": "processed"})
        self.assertEqual([(float(quantity), count, state) for quantity, count, state in rows], [(5.0, 2, "closed")])


@tagged("post_install", "-at_install")
class TestLiveUsageReaders(FusionBillingCase):
    """Readers see the deltas not folded yet, exactly as the fold will make the rows."""

    def test_live_totals_the_view_and_the_fold_agree(self):
        first = date.today().replace(day=1)
        order = self._create_subscription(external_id="live_1", start_date=first)
        metrics = {kind: self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": kind, "code": f"m_{kind}", "aggregation": kind, "field_name": "v"})
            for kind in ("sum", "max", "latest", "count")}
        start, end = order._fc_period()
        self.env["fusion.billing.usage"].create({  # a row folded earlier
            "subscription_id": order.id, "metric_id": metrics["sum"].id, "period_start": start, "period_end": end,
            "quantity": 150, "events_count": 3, "last_event_at": datetime.combine(start, datetime.min.time())})
        at = int(datetime.combine(start, datetime.min.time(), tzinfo=timezone.utc).timestamp()) + 3600
        batches = [[(5, 0), (9, 60)], [(-2, 30), (4, 60)], [(7, 10)]]  # (value, seconds): 'latest' ties at 60
        for number, batch in enumerate(batches):
            events = [lago.validate_event({"transaction_id": f"{kind}-{number}-{i}", "external_subscription_id": "live_1",
                                           "code": f"m_{kind}", "timestamp": at + seconds, "properties": {"v": value}},
                                          now=datetime.now(timezone.utc))
                      for kind in metrics for i, (value, seconds) in enumerate(batch)]
            self.env["fusion.billing.event"]._ingest(self.service, events)
        expected = {"sum": (150 + 5 + 9 - 2 + 4 + 7, 8), "max": (9, 5), "latest": (4, 5), "count": (5, 5)}

        live = self.env["fusion.billing.usage"]._fc_live_totals(order, start)
        self.assertEqual({kind: (float(live[m.id][0]), live[m.id][1]) for kind, m in metrics.items()}, expected)
        self.env.flush_all()
        self.env.cr.execute("SELECT metric_id, quantity, events_count FROM fusion_billing_usage_live "
                            "WHERE subscription_id = %s AND period_start = %s", [order.id, start])
        view = {metric_id: (float(quantity), count) for metric_id, quantity, count in self.env.cr.fetchall()}
        self.assertEqual({kind: view[m.id] for kind, m in metrics.items()}, expected, "the overview's view")
        overview = {row["code"]: row["quantity"] for row in self.service._fc_overview_values()["metrics"]}
        self.assertEqual(overview["m_sum"], 173, "the service overview counts what is not folded yet")

        self.env["fusion.billing.usage"]._fc_fold(order.ids)
        rows = {u.metric_id: (u.quantity, u.events_count) for u in order.x_fc_usage_ids}
        self.assertEqual({kind: rows[m] for kind, m in metrics.items()}, expected, "the fold makes the rows exact")
        self.assertFalse(self.env["fusion.billing.usage.delta"].sudo().search([("subscription_id", "=", order.id)]))


@tagged("post_install", "-at_install")
class TestQuotaUnderConcurrentBatches(CommittedSubscription):
    """Two batches that cross the included quantity only together, ingested at the same moment by
    two workers: neither sees the other's uncommitted delta (READ COMMITTED), so neither signals;
    the fold, where the period's exact total is known, does (still once per period)."""

    def reached(self, env):
        env.cr.execute("SELECT payload FROM fusion_billing_webhook WHERE service_id = %s AND event_type = %s",
                       [self.ids["service"], "subscription.usage_threshold_reached"])
        return [row[0] for row in env.cr.fetchall()]

    def test_the_quota_crossed_by_two_concurrent_batches_is_signalled_once(self):
        with real_session(self.env) as env:
            env["fusion.billing.charge"].search([("service_id", "=", self.ids["service"])]).included_quantity = 100
        Event = type(self.env["fusion.billing.event"])
        original_roll_up, both_counted = Event._roll_up, threading.Barrier(2, timeout=60)

        def roll_up_then_wait(model, *args, **kwargs):
            result = original_roll_up(model, *args, **kwargs)
            both_counted.wait()  # both batches checked the quota; neither has committed yet
            return result

        batches = iter([("a", 60), ("b", 60)])
        lock = threading.Lock()

        def ingest(_env):
            with lock:
                transaction_id, units = next(batches)
            self.assertEqual(self.ingest(transaction_id, units), "processed")

        with patch.object(Event, "_roll_up", roll_up_then_wait):
            errors = run_as_workers(self.env, ingest, workers=2, timeout=120)
        self.assertEqual(errors, [])
        with real_session(self.env) as env:
            self.assertEqual(self.reached(env), [], "each batch alone saw 60 of the 100 included units")
        with patch.object(self.registry, "cursor", partial(real_cursor, self.registry)):
            with real_session(self.env) as env:
                env["fusion.billing.usage"]._cron_fold()  # the fold job, a few minutes later
            with real_session(self.env) as env:
                reached = self.reached(env)
            self.assertEqual(len(reached), 1, "signalled by the fold, with no further event needed")
            self.assertEqual(json.loads(reached[0])["subscription"]["usage_threshold"]["units"], "120.0")
            self.ingest("c", 1)  # the period's quota is known to be used up: no second signal
            with real_session(self.env) as env:
                env["fusion.billing.usage"]._cron_fold()
            with real_session(self.env) as env:
                self.assertEqual(self.reached(env), reached, "once per period")


@tagged("post_install", "-at_install")
class TestIngestHotPath(FusionBillingCase):
    """A batch appends its deltas in one statement, and recounts only what the quota check reads."""

    @contextmanager
    def statements(self):
        seen = []
        cursor_class = type(self.env.cr)
        original = cursor_class.execute

        def spy(cursor, query, *args, **kwargs):
            seen.append(" ".join(str(query).split()))
            return original(cursor, query, *args, **kwargs)

        with patch.object(cursor_class, "execute", spy):
            yield seen

    def test_one_delta_statement_per_batch_and_only_checked_metrics_recounted(self):
        first = date.today().replace(day=1)
        orders = [self._create_subscription(external_id=f"hot_{n}", start_date=first) for n in range(3)]
        visitors = self.env["fusion.billing.metric"].create({
            "service_id": self.service.id, "name": "Visitors", "code": "visitors", "aggregation": "unique_count",
            "field_name": "visitor"})
        self.env["fusion.billing.charge"].create({  # charged, no included quantity: no quota to check
            "service_id": self.service.id, "plan_id": self.plan.id, "metric_id": visitors.id,
            "charge_model": "standard", "properties": {"amount": "1"}})
        at = int(datetime.combine(first, datetime.min.time(), tzinfo=timezone.utc).timestamp()) + 3600
        now = datetime.now(timezone.utc)

        def batch(tag):
            events = []
            for n in range(3):
                events.append({"transaction_id": f"{tag}-bw-{n}", "external_subscription_id": f"hot_{n}",
                               "code": "bandwidth_gb", "timestamp": at, "properties": {"gb": 10}})
                events += [{"transaction_id": f"{tag}-v-{n}-{v}", "external_subscription_id": f"hot_{n}",
                            "code": "visitors", "timestamp": at, "properties": {"visitor": f"{tag}{v % 2}"}}
                           for v in range(3)]
            return [lago.validate_event(event, now=now) for event in events]

        self.env["fusion.billing.event"]._ingest(self.service, batch("first"))
        with self.statements() as seen:
            self.env["fusion.billing.event"]._ingest(self.service, batch("second"))
        appends = [query for query in seen if "INSERT INTO fusion_billing_usage_delta" in query]
        recounts = [query for query in seen if "COUNT(DISTINCT" in query]
        self.assertEqual(len(appends), 1, "one statement appends the batch's 6 deltas (3 subscriptions, 2 metrics)")
        self.assertEqual(recounts, [], "the quota check reads bandwidth only: no visitor is recounted")
        for order in orders:
            live = self.env["fusion.billing.usage"]._fc_live_totals(order, first)
            self.assertEqual({metric: (float(units), count) for metric, (units, count) in live.items()},
                             {self.metric_bandwidth.id: (20.0, 2), visitors.id: (4.0, 6)})
