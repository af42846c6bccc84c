"""NexaCloud import runs: a persistent history (the cutover's audit trail), a background job that
isolates every failure (a bad source row, a run that crashes) and checks, when it runs, that a
real run was asked for by a Fusion Billing administrator."""
from datetime import timedelta
from unittest.mock import patch

from odoo import Command, fields
from odoo.exceptions import AccessError, UserError
from odoo.tests import tagged
from odoo.tools import mute_logger

from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid
from odoo.addons.fusion_centralize_billing.services.nexacloud_import import ImportRun

from .common import NexacloudSourceCase, NexacloudSourceHttpCase

MANAGER = "fusion_centralize_billing.group_fusion_billing_manager"


class ImportRunHelpers:
    Run = "fusion.billing.import.run"

    def imported_orders(self):
        return self.env["sale.order"].search([("x_fc_service_id.code", "=", "nexacloud")])

    def queue(self, dry_run, user):
        """Press Run Import as ``user``: the queued run."""
        wizard = self.env["fusion.billing.nexacloud.import"].with_user(user).create({"dry_run": dry_run})
        wizard.action_run_import()
        return wizard.run_id.with_env(self.env)

    def run_job(self):
        self.env[self.Run]._cron_run_queued()
        self.env.invalidate_all()


@tagged("post_install", "-at_install")
class TestImportHistory(ImportRunHelpers, NexacloudSourceCase):

    def test_every_run_is_kept_with_who_when_mode_source_duration_counts_banner_and_rows(self):
        dry = self.run_import(dry_run=True, user=self.billing_user)
        real = self.run_import()
        history = self.env[self.Run].search([])
        self.assertEqual(history, real | dry)
        self.assertEqual(history[0], real, "newest first")

        self.assertEqual((dry.user_id, dry.dry_run), (self.billing_user, True))
        self.assertEqual((real.user_id, real.dry_run), (self.billing_admin, False))
        for run in (dry, real):
            self.assertIn(f"{self.role}@", run.source)
            self.assertIn(self.database, run.source)
            self.assertNotIn(self.password, run.source + (run.banner_message or ""))
            self.assertTrue(run.create_date and run.started_at and run.finished_at)
            self.assertGreaterEqual(run.finished_at, run.started_at)
            self.assertGreaterEqual(run.duration, 0)
            self.assertEqual(run.banner, "danger")
            subscriptions = run.count_ids.filtered(lambda c: c.entity == "subscriptions")
            self.assertEqual((subscriptions.created, subscriptions.skipped, subscriptions.failed), (5, 4, 2))
            self.assertEqual(len(run.count_ids), 8, "one row per entity")
            self.assertEqual(set(run.line_ids.filtered(lambda l: l.outcome == "failed").mapped("source_id")),
                             {sid("u", 9), "5", sid("s", 10), sid("s", 11)})
        self.assertIn("Dry run", dry.banner_message)
        self.assertEqual(real.service_id.code, "nexacloud")
        self.assertEqual(real.failed_count, 4)

    def test_the_history_outlives_the_wizard(self):
        """Odoo vacuums transient records after about an hour; the run and its rows stay."""
        run = self.run_import(dry_run=True)
        wizard = self.env["fusion.billing.nexacloud.import"].search([])
        self.assertTrue(wizard)
        self.env.cr.execute("UPDATE fusion_billing_nexacloud_import SET create_date = %s, write_date = %s",
                            [fields.Datetime.now() - timedelta(days=2)] * 2)
        self.env["fusion.billing.nexacloud.import"]._transient_vacuum()
        self.env.invalidate_all()
        self.assertFalse(wizard.exists())
        self.assertTrue(run.exists() and run.line_ids and run.count_ids and run.banner_message)

    def test_history_is_listed_under_import_from_nexacloud(self):
        menu = self.env.ref("fusion_centralize_billing.menu_fusion_billing_import_runs")
        self.assertEqual(menu.name, "History")
        self.assertEqual(menu.parent_id.name, "Import from NexaCloud")
        self.assertEqual(menu.action.res_model, self.Run)
        starter = menu.parent_id.child_id.filtered(lambda m: m.action.res_model == "fusion.billing.nexacloud.import")
        self.assertTrue(starter, "the wizard stays the way to start a run")
        run = self.run_import(dry_run=True, user=self.billing_user)
        visible = self.env[self.Run].with_user(self.billing_user).search([])
        self.assertEqual(visible, run)
        lines = self.env[run.action_open_lines()["res_model"]].search(run.action_open_lines()["domain"])
        self.assertEqual(lines, run.line_ids)

    def test_the_history_is_an_audit_trail_nobody_edits(self):
        run = self.run_import(dry_run=True)
        for user in (self.billing_user, self.billing_admin):
            with self.assertRaises(AccessError):
                run.with_user(user).write({"banner_message": "all good"})
            with self.assertRaises(AccessError):
                run.with_user(user).unlink()
            with self.assertRaises(AccessError):
                run.line_ids[:1].with_user(user).write({"reason": "fine"})
            with self.assertRaises(AccessError):
                run.line_ids[:1].with_user(user).unlink()
            with self.assertRaises(AccessError):
                run.count_ids[:1].with_user(user).write({"failed": 0})


@tagged("post_install", "-at_install")
class TestImportJobIsolation(ImportRunHelpers, NexacloudSourceCase):

    def test_a_poisoned_source_row_fails_alone_and_is_listed(self):
        """Columns holding text where the contract says integer: that plan and that deployment fail
        with their reason; every other row is imported (today the whole run stopped)."""
        self.admin_sql("""ALTER TABLE plans ALTER COLUMN vcpu_limit TYPE text;
                          UPDATE plans SET vcpu_limit = '2 cores' WHERE id = 3;
                          ALTER TABLE deployments ALTER COLUMN vcpu TYPE text""")
        self.admin_sql(f"UPDATE deployments SET vcpu = 'one' WHERE id = '{sid('d', 2)}'")
        run = self.run_import()
        failed = {line.source_id: line.reason for line in run.line_ids if line.outcome == "failed"}
        self.assertEqual(failed["3"], "invalid vcpu_limit '2 cores' (not a number)")
        self.assertEqual(failed[sid("d", 2)], "invalid vcpu allocation 'one'")
        self.assertIn("could not be imported", failed[sid("s", 3)])  # the poisoned plan's subscription
        orders = self.imported_orders()
        self.assertEqual(len(orders), 4)  # 5 importable subscriptions but the poisoned plan's
        first = orders.filtered(lambda o: o.x_fc_external_id == sid("s", 1))
        usage = self.env["fusion.billing.usage"].search([("subscription_id", "=", first.id)])
        self.assertEqual({u.metric_id.code: u.quantity for u in usage}, {"vcpu": 2, "ram_mb": 2048, "disk_gb": 50})

    def test_a_run_that_crashes_fails_alone_with_its_reason_and_is_never_retried(self):
        """Three queued runs, the middle one crashes half-way (an unexpected error): it is rolled
        back, marked failed with the reason, its requester gets an activity; the others run."""
        queued = self.env[self.Run]
        for dry_run, user in ((True, self.billing_user), (False, self.billing_admin), (True, self.billing_admin)):
            queued |= self.env[self.Run].with_user(user)._create_queued(dry_run)
        good_dry, poisoned, last = queued
        original, calls = ImportRun.import_subscriptions, []

        def import_subscriptions(run, rows):
            calls.append(run)
            original(run, rows)
            if not run.env.context.get("fusion_billing_dry_run"):
                raise KeyError("plan_period")  # a bug, after this run wrote its subscriptions
        with patch.object(ImportRun, "import_subscriptions", import_subscriptions), \
                mute_logger("odoo.addons.fusion_centralize_billing.models.fusion_billing_import_run"):
            self.run_job()
            self.assertEqual(queued.mapped("state"), ["done", "failed", "done"])
            self.assertIn("KeyError", poisoned.error)
            self.assertIn("nothing of this run was saved", poisoned.error)
            self.assertFalse(self.imported_orders(), "the crashed real run was rolled back entirely")
            self.assertTrue(poisoned.finished_at)
            activity = poisoned.activity_ids
            self.assertEqual(activity.user_id, self.billing_admin)
            self.assertIn("failed", activity.summary)
            self.assertEqual(last.banner, "danger")

            self.run_job()  # the scheduler runs again: a failed run is final, never replayed
            self.assertEqual(len(calls), 3)
            self.assertEqual(poisoned.state, "failed")
        self.assertEqual(self.env[self.Run].search_count([("state", "=", "failed")], limit=5), 1)

    def test_a_run_left_running_by_a_killed_worker_is_marked_interrupted_by_the_job(self):
        dead = self.env[self.Run].with_user(self.billing_admin)._create_queued(True)
        dead.sudo().state = "running"  # its worker was killed: the state stayed, its transaction and lock did not
        self.run_job()
        self.assertEqual(dead.state, "failed")
        self.assertIn("Interrupted", dead.error)
        self.assertEqual(dead.activity_ids.user_id, self.billing_admin)


@tagged("post_install", "-at_install")
class TestImportAdministratorCheck(ImportRunHelpers, NexacloudSourceCase):
    """Issue 16 §4: a Fusion Billing User can only ever dry run."""

    def test_a_user_cannot_queue_a_real_run_by_creating_the_wizard_queued(self):
        values = {"dry_run": False, "state": "queued"}
        try:
            self.env["fusion.billing.nexacloud.import"].with_user(self.billing_user).create(values)
        except (AccessError, ValueError):
            pass  # refused outright is fine too
        self.run_job()
        self.assertFalse(self.imported_orders())
        self.assertFalse(self.env[self.Run].search([("dry_run", "=", False)]))

    def test_a_user_cannot_untick_dry_run_once_queued(self):
        wizard = self.env["fusion.billing.nexacloud.import"].with_user(self.billing_user).create({"dry_run": True})
        wizard.action_run_import()
        run = wizard.run_id
        wizard.write({"dry_run": False})  # the wizard's box: an input for the next press, not the queued run
        with self.assertRaises(AccessError):
            run.write({"dry_run": False})
        with self.assertRaises(AccessError):
            run.write({"state": "queued", "user_id": self.billing_admin.id})
        with self.assertRaises(AccessError):
            self.env[self.Run].with_user(self.billing_user).create({"dry_run": False, "state": "queued"})
        with self.assertRaises(AccessError):  # and pressing again with the box unticked
            wizard.action_run_import()
        self.run_job()
        self.assertEqual((run.state, run.dry_run), ("done", True))
        self.assertFalse(self.imported_orders())

    def test_the_job_refuses_a_real_run_whose_requester_is_no_longer_an_administrator(self):
        run = self.queue(False, self.billing_admin)
        self.billing_admin.write({"group_ids": [Command.unlink(self.env.ref(MANAGER).id)]})
        self.assertFalse(self.billing_admin.has_group(MANAGER))
        self.run_job()
        self.assertEqual(run.state, "failed")
        self.assertIn("not a Fusion Billing administrator", run.error)
        self.assertFalse(self.imported_orders())

    def test_the_job_refuses_a_real_run_queued_for_a_user_by_code(self):
        """Whatever queued it (a bug, a server action run as superuser), the job checks the requester."""
        run = self.env[self.Run].with_user(self.billing_user).sudo()._create_queued(False)
        self.assertEqual(run.user_id, self.billing_user)
        self.run_job()
        self.assertEqual(run.state, "failed")
        self.assertIn("not a Fusion Billing administrator", run.error)
        self.assertFalse(self.imported_orders())

    def test_code_running_as_the_superuser_may_import(self):
        """odoo shell, scripts and server actions run as the superuser, which Odoo keeps archived."""
        run = self.env[self.Run]._create_queued(False)
        self.assertTrue(run.user_id._is_superuser())
        self.run_job()
        self.assertEqual(run.state, "done", run.error)

    def test_an_administrator_real_run_still_runs(self):
        run = self.queue(False, self.billing_admin)
        self.run_job()
        self.assertEqual(run.state, "done", run.error)
        self.assertEqual(len(self.imported_orders()), 5)


@tagged("post_install", "-at_install")
class TestImportAdministratorCheckRpc(ImportRunHelpers, NexacloudSourceHttpCase):
    """The same exploits over JSON-RPC, as a Fusion Billing User's browser or script sends them."""

    def call(self, model, method, *args, **kwargs):
        return self.make_jsonrpc_request(f"/web/dataset/call_kw/{model}/{method}", {
            "model": model, "method": method, "args": list(args), "kwargs": kwargs})

    def test_a_user_cannot_queue_or_turn_a_run_real_over_rpc(self):
        self.authenticate(self.billing_user.login, self.billing_user.login)
        wizard_id = self.call("fusion.billing.nexacloud.import", "create", {"dry_run": True})
        wizard_id = wizard_id[0] if isinstance(wizard_id, list) else wizard_id
        self.call("fusion.billing.nexacloud.import", "action_run_import", [wizard_id])
        run = self.env["fusion.billing.nexacloud.import"].browse(wizard_id).run_id
        self.assertEqual((run.state, run.dry_run), ("queued", True))
        for method, args in (("write", ([run.id], {"dry_run": False})),
                             ("write", ([run.id], {"state": "queued"})),
                             ("create", ({"dry_run": False, "state": "queued"},)),
                             ("_create_queued", (False,)),
                             ("_cron_run_queued", ())):
            with self.assertRaises(Exception, msg=method) as caught:
                self.call(self.Run, method, *args)
            self.assertRegex(str(caught.exception), "AccessError|private", method)
        with mute_logger("odoo.http"), self.assertRaisesRegex(Exception, "ValueError|AccessError"):
            self.call("fusion.billing.nexacloud.import", "create", {"dry_run": False, "state": "queued"})
        with self.assertRaisesRegex(Exception, "AccessError"):  # pressing Run Import with dry run unticked
            self.call("fusion.billing.nexacloud.import", "write", [wizard_id], {"dry_run": False})
            self.call("fusion.billing.nexacloud.import", "action_run_import", [wizard_id])
        self.run_job()
        self.assertEqual((run.state, run.dry_run), ("done", True))
        self.assertFalse(self.imported_orders())
        self.assertFalse(self.env[self.Run].search([("dry_run", "=", False)]))
