"""Activate Subscriptions at NexaCloud size (about 25,000 drafts on cutover day).

The button only queues a run (``fusion.billing.activation.run``) and returns at once: confirming
every draft inside the web request was killed by the request's time limit (``--limit-time-real``)
and rolled back every time. The background job confirms them in batches, each committed, each
draft claimed with ``SKIP LOCKED`` and recorded once per run in the same transaction as its
confirmation and webhook: a killed run resumes where it stopped and nothing is done twice.

The first class runs on the test's own transaction (behaviour); the second commits for real, in
real database sessions as Odoo workers have (per-batch commits, a killed worker, two workers).
"""
from datetime import timedelta
from functools import partial
from unittest.mock import patch

from odoo import Command, fields
from odoo.exceptions import UserError
from odoo.tests import TransactionCase, tagged

from ..services.activation import Activation
from .common import (FusionBillingCase, committed_catalog, real_cursor, real_session, remove_committed,
                     run_as_workers)


class _WorkerKilled(BaseException):
    """What a killed worker looks like to its transaction: it stops there, nothing after it runs."""


def _drafts(env, service, plan, partner, count, prefix):
    """``count`` imported drafts of ``service`` Odoo may activate (the app billed the current period)."""
    today = fields.Date.context_today(env["sale.order"])
    return env["sale.order"].create([{
        "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": service.id,
        "x_fc_external_id": f"{prefix}-{n}", "pricelist_id": service._fc_pricelist().id,
        "start_date": today - timedelta(days=10), "next_invoice_date": today + timedelta(days=20),
        "order_line": [Command.create(plan._fc_base_fee_line_values())],
    } for n in range(count)])


@tagged("post_install", "-at_install")
class TestActivationIsQueued(FusionBillingCase):

    def setUp(self):
        super().setUp()
        self.service.billing_mode = "shadow"
        self.orders = _drafts(self.env, self.service, self.plan, self.partner, 5, "q")
        self.service.billing_mode = "live"
        self.Run = self.env["fusion.billing.activation.run"]

    def test_the_button_confirms_nothing_in_the_request_and_a_second_press_queues_nothing(self):
        result = self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.assertEqual(result["params"]["title"], "Activation queued")
        self.assertIn("5 draft subscriptions queued for activation", result["params"]["message"])
        self.assertEqual(set(self.orders.mapped("state")), {"draft"}, "nothing confirmed inside the request")
        run = self.Run.search([("service_id", "=", self.service.id)])
        self.assertEqual((run.state, run.user_id, run.draft_count), ("queued", self.billing_admin, 5))
        self.assertIn("queued by", self.service.activation_progress)

        again = self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.assertEqual(again["params"]["title"], "Activation already under way")
        self.assertIn("already queued or running (0 of 5 drafts handled): nothing more was queued",
                      again["params"]["message"])
        self.assertEqual(self.Run.search_count([("service_id", "=", self.service.id)]), 1)

        self.Run._cron_run_queued(batch_size=2)
        self.assertEqual((run.state, run.handled_count), ("done", 5))
        self.assertEqual(set(self.orders.mapped("state")), {"sale"})
        self.service.invalidate_recordset(["activation_progress"])  # the form reloaded
        self.assertFalse(self.service.activation_progress)
        self.assertIn(f"Activation by {self.billing_admin.name}: 5 subscriptions confirmed",
                      self.service.message_ids[0].body)
        webhooks = self.env["fusion.billing.webhook"].search([
            ("service_id", "=", self.service.id), ("event_type", "=", "subscription.updated")])
        self.assertEqual(sorted(webhooks.mapped("object_ref")), sorted(f"sale.order,{o.id}" for o in self.orders))

    def test_a_poisoned_order_is_listed_and_the_others_are_confirmed(self):
        poisoned = self.orders[2]
        activate = type(self.env["sale.order"])._fc_activate

        def fails_for_one(order):
            if order == poisoned:
                raise UserError("its customer has no billing address")
            return activate(order)

        with patch.object(type(self.env["sale.order"]), "_fc_activate", fails_for_one):
            run = self.activate_subscriptions()
        self.assertEqual(poisoned.state, "draft")
        self.assertEqual(set((self.orders - poisoned).mapped("state")), {"sale"})
        message = self.service.message_ids[0].body
        self.assertIn("4 subscriptions confirmed", message)
        self.assertIn("1 failed", message)
        self.assertIn(f"{poisoned.name}: its customer has no billing address", message)
        self.assertEqual(run.line_ids.filtered(lambda line: line.outcome == "failed").order_id, poisoned)
        action = self.service.with_user(self.billing_user).action_view_activation_orders()  # the service's button
        listed = self.env[action["res_model"]].with_user(self.billing_user).search(action["domain"])
        self.assertEqual(listed.filtered(lambda line: line.outcome == "failed").order_id.ids, poisoned.ids)
        self.assertEqual(len(listed), 5, "every draft's outcome, for any Fusion Billing user")
        self.assertFalse(self.env["fusion.billing.webhook"].search([("object_ref", "=", f"sale.order,{poisoned.id}")]),
                         "nothing announced for the order that failed")

    def test_a_switch_back_to_shadow_stops_the_job_before_its_next_batch(self):
        self.service.with_user(self.billing_admin).action_activate_subscriptions()
        handle, service = Activation.handle, self.service

        def then_back_to_shadow(worker, order):
            outcome = handle(worker, order)
            service.sudo().billing_mode = "shadow"  # pressed meanwhile, committed before the next batch
            return outcome

        with patch.object(Activation, "handle", then_back_to_shadow):
            self.Run._cron_run_queued(batch_size=2)
        self.assertEqual(self.orders.mapped("state"), ["sale", "sale", "draft", "draft", "draft"])
        message = self.service.message_ids[0].body
        self.assertIn("Stopped: NexaCloud was switched back to shadow before the activation ended", message)
        self.assertIn("2 subscriptions confirmed", message)

    def test_the_job_refuses_when_the_service_went_back_to_shadow_or_the_requester_is_no_administrator(self):
        self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.service.billing_mode = "shadow"
        self.Run._cron_run_queued()
        run = self.Run.search([("service_id", "=", self.service.id)])
        self.assertEqual(run.state, "failed")
        self.assertIn("switched back to shadow", run.error)
        self.assertIn("Nothing more was confirmed", self.service.message_ids[0].body)

        self.service.billing_mode = "live"
        self.service.with_user(self.billing_admin).action_activate_subscriptions()
        self.billing_admin.group_ids -= self.env.ref("fusion_centralize_billing.group_fusion_billing_manager")
        self.Run._cron_run_queued()
        run = self.Run.search([("service_id", "=", self.service.id)], limit=1)
        self.assertEqual(run.state, "failed")
        self.assertIn(f"{self.billing_admin.name}, who asked, is not (now)", run.error)
        self.assertEqual(set(self.orders.mapped("state")), {"draft"})


@tagged("post_install", "-at_install")
class TestActivationInBackground(TransactionCase):
    """Committed for real: drafts, runs, confirmations and webhooks are seen by other sessions."""

    def setUp(self):
        super().setUp()
        with real_session(self.env) as env:
            service, metric, product, plan = committed_catalog(env, "Activation")
            partner = env["res.partner"].create({"name": "Activation client"})
            orders = _drafts(env, service, plan, partner, 14, "act")
            service.billing_mode = "live"
            self.ids = {"service": service.id, "orders": orders.ids, "metric": metric.id,
                        "catalog": [("sale.subscription.plan", plan.id), ("product.product", product.id)]}
        self.addCleanup(self._remove_committed)

    def _remove_committed(self):
        with real_session(self.env) as env:
            remove_committed(env, self.ids)

    def press(self):
        with real_session(self.env) as env:
            env["fusion.billing.service"].browse(self.ids["service"]).action_activate_subscriptions()

    def job(self, env, batch_size=4):
        env["fusion.billing.activation.run"]._cron_run_queued(batch_size=batch_size)

    def assert_each_confirmed_and_announced_once(self):
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(self.ids["orders"])
            self.assertEqual(set(orders.mapped("state")), {"sale"})
            env.cr.execute("""SELECT object_ref, count(*) FROM fusion_billing_webhook
                               WHERE service_id = %s AND event_type = 'subscription.updated' GROUP BY 1""",
                           [self.ids["service"]])
            self.assertEqual(dict(env.cr.fetchall()), {f"sale.order,{order_id}": 1 for order_id in orders.ids},
                             "one webhook per order")
            run = env["fusion.billing.activation.run"].search([("service_id", "=", self.ids["service"])])
            self.assertEqual(len(run), 1)
            self.assertEqual((run.state, len(run.line_ids), set(run.line_ids.mapped("outcome"))),
                             ("done", len(orders), {"confirmed"}))
            self.assertEqual(sorted(run.line_ids.order_id.ids), sorted(orders.ids), "each order handled once")
            messages = env["mail.message"].search([
                ("model", "=", "fusion.billing.service"), ("res_id", "=", self.ids["service"]),
                ("body", "ilike", "Activation by")])
            self.assertEqual(len(messages), 1, "the outcome is posted once")
            self.assertIn(f"{len(orders)} subscriptions confirmed", messages.body)

    def test_a_killed_worker_resumes_where_its_last_batch_was_committed(self):
        self.press()
        handle, calls = Activation.handle, []

        def killed_at_the_eleventh(worker, order):
            calls.append(order.id)
            if len(calls) == 11:
                raise _WorkerKilled  # mid-batch: the third batch (orders 9 to 12) is never committed
            return handle(worker, order)

        registry = self.registry
        with patch.object(Activation, "handle", killed_at_the_eleventh), \
                patch.object(registry, "cursor", partial(real_cursor, registry)), \
                self.assertRaises(_WorkerKilled), real_session(self.env) as env:
            self.job(env)
        with real_session(self.env) as env:
            orders = env["sale.order"].browse(self.ids["orders"])
            self.assertEqual(orders.filtered(lambda o: o.state == "sale").ids, self.ids["orders"][:8],
                             "the two batches done before the kill are committed, the third is rolled back")
            run = env["fusion.billing.activation.run"].search([("service_id", "=", self.ids["service"])])
            self.assertEqual((run.state, len(run.line_ids)), ("queued", 8), "still to finish")
        errors = run_as_workers(self.env, self.job, workers=1)  # the job's next run
        self.assertEqual(errors, [])
        self.assert_each_confirmed_and_announced_once()

    def test_two_workers_at_once_confirm_each_order_once(self):
        self.press()
        self.press()  # a second press while it is queued adds nothing
        errors = run_as_workers(self.env, partial(self.job, batch_size=3), workers=2)
        self.assertEqual(errors, [])
        self.assert_each_confirmed_and_announced_once()

    def test_two_presses_at_once_queue_one_activation(self):
        errors = run_as_workers(self.env, lambda env: env["fusion.billing.service"].browse(
            self.ids["service"]).action_activate_subscriptions())
        self.assertEqual(errors, [])
        with real_session(self.env) as env:
            runs = env["fusion.billing.activation.run"].search([("service_id", "=", self.ids["service"])])
            self.assertEqual((len(runs), runs.state), (1, "queued"))
