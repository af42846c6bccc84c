import logging
import time

from markupsafe import Markup

from odoo import api, fields, models
from odoo.exceptions import UserError

from ..core import nexacloud
from ..services import nexacloud_import
from ..services.nexacloud_import import ENTITIES, ENTITY_LABELS, OUTCOMES, ImportRun
from . import batch_jobs

_logger = logging.getLogger(__name__)

MANAGER_GROUP = "fusion_centralize_billing.group_fusion_billing_manager"
PROGRESS_PARAMETER = "fusion_billing.nexacloud_import_progress"
RUN_STATES = [("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")]
BANNERS = [("success", "Green"), ("warning", "Amber"), ("danger", "Red")]


class _DryRunRollback(Exception):
    """Raised inside the dry run's savepoint so that everything it wrote is rolled back."""


class FusionBillingImportRun(models.Model):
    """One NexaCloud import run, dry or real: the cutover's audit trail (never edited, never deleted).

    Created by the *Import from NexaCloud* wizard (Run Import), run by the background job
    (:meth:`_cron_run_queued`), which checks again that a real run was asked for by a Fusion
    Billing administrator. Every field is written by code: users can only read runs.
    """

    _name = "fusion.billing.import.run"
    _description = "NexaCloud Import Run"
    _inherit = ["mail.thread", "mail.activity.mixin"]
    _order = "id desc"
    _check_company_auto = True

    company_id = fields.Many2one("res.company", required=True, readonly=True, index=True,
                                 default=lambda self: self.env.company)
    service_id = fields.Many2one("fusion.billing.service", readonly=True, index=True, check_company=True,
                                 help="The NexaCloud service the run wrote to (a dry run writes nothing).")
    user_id = fields.Many2one("res.users", string="Requested by", required=True, readonly=True, index=True)
    dry_run = fields.Boolean(readonly=True, help="Computed the whole import and rolled it back.")
    state = fields.Selection(RUN_STATES, required=True, default="queued", readonly=True, index=True, tracking=True)
    source = fields.Char(readonly=True, help="Where the rows were read: role@host:port/database (never the password).")
    started_at = fields.Datetime(readonly=True)
    finished_at = fields.Datetime(readonly=True)
    duration = fields.Float(string="Duration (s)", digits=(16, 1), readonly=True)
    progress = fields.Char(compute="_compute_progress")
    error = fields.Text(readonly=True, help="Why the run failed as a whole (nothing of it was saved).")
    banner = fields.Selection(BANNERS, readonly=True)
    banner_message = fields.Char(string="Result", readonly=True)
    created_count = fields.Integer(string="Created", readonly=True)
    updated_count = fields.Integer(string="Updated", readonly=True)
    failed_count = fields.Integer(string="Failed", readonly=True)
    skipped_count = fields.Integer(string="Skipped", readonly=True)
    warning_count = fields.Integer(string="Warnings", readonly=True)
    count_ids = fields.One2many("fusion.billing.import.run.count", "run_id", string="Counts per Entity", readonly=True)
    line_ids = fields.One2many("fusion.billing.import.run.line", "run_id", string="Reported Rows", readonly=True)

    @api.depends("dry_run")
    def _compute_display_name(self):
        for run in self:
            kind = self.env._("Dry run") if run.dry_run else self.env._("Import")
            run.display_name = f"{kind} #{run.id or ''}".strip()

    @api.depends("state")
    def _compute_progress(self):
        # Kept in a parameter, not on this row: the run's own transaction updates the row at the
        # end, and a concurrent update of the same row would make that fail (repeatable read).
        run_id, _sep, text = (self.env["ir.config_parameter"].sudo().get_param(PROGRESS_PARAMETER) or "").partition(":")
        for run in self:
            run.progress = text if run.state in ("queued", "running") and run_id == str(run.id) else False

    # ------------------------------------------------------------------ queueing (the wizard's Run Import)
    @api.model
    def _create_queued(self, dry_run):
        """A queued run requested by the current user (no check: see the wizard and the job)."""
        run = self.sudo().create({
            "dry_run": bool(dry_run), "user_id": self.env.user.id, "company_id": self.env.company.id,
            "source": _describe_source(self.env), "state": "queued"})
        return run.with_env(self.env)

    def _report_progress(self, text):
        """Visible progress, committed apart from the run's own (possibly rolled back) transaction."""
        if not batch_jobs.real_transactions(self.env):
            return
        with self.env.registry.cursor() as cr:
            self.env(cr=cr)["ir.config_parameter"].sudo().set_param(PROGRESS_PARAMETER, f"{self.id}:{text}")

    def _fail_interrupted(self):
        """Runs left *running* while nobody holds the import lock died with their worker."""
        for run in self.sudo().search([("state", "=", "running")]):
            run._finish_failed(self.env._(
                "Interrupted: the server stopped, or the job hit its time limit (--limit-time-real-cron), "
                "before the run ended; nothing of it was saved. Run it again: re-runs are safe."))

    # ------------------------------------------------------------------ the background job
    @api.model
    def _cron_run_queued(self):
        """Run the queued imports one after the other, each isolated: whatever one run raises
        (its source became unreadable, a bug, a database error) rolls back that run only, marks
        it failed with the reason and tells its requester; a failed run is final, never retried.
        Runs left *running* by a killed worker are marked interrupted."""
        Run = self.sudo()
        if not Run.search_count([("state", "in", ("queued", "running"))], limit=1):
            return
        with nexacloud_import.import_lock(self.env.cr) as locked:
            if not locked:  # another worker runs an import: come back when it is likely done
                self.env.ref("fusion_centralize_billing.ir_cron_nexacloud_import").sudo()._trigger(
                    fields.Datetime.add(fields.Datetime.now(), minutes=5))
                return
            Run._fail_interrupted()
            Run._commit()
            for run in Run.search([("state", "=", "queued")], order="id"):
                run._run_locked()

    def _run_locked(self):
        """Run this queued run (the caller holds the import lock), isolated from the others."""
        self.ensure_one()
        refusal = self._refusal()
        if refusal:
            self._finish_failed(refusal)
            self._commit()
            return
        self.write({"state": "running", "started_at": fields.Datetime.now()})
        self._report_progress(self.env._("running since %s UTC", fields.Datetime.now()))
        self._commit()
        started = time.monotonic()
        try:
            with self.env.cr.savepoint():
                self._execute(started)
        except Exception as error:  # noqa: BLE001 — isolate this run; the next ones still run
            self.env.invalidate_all()
            if isinstance(error, UserError):
                reason = str(error)
            else:
                _logger.exception("NexaCloud import run %s failed", self.id)
                reason = self.env._(
                    "Unexpected error (%(type)s: %(message)s): nothing of this run was saved. The details "
                    "are in the server log; fix the cause, then run again.",
                    type=type(error).__name__, message=nexacloud.clean_text(str(error), 300))
            self._finish_failed(reason, started)
        self._commit()

    def _refusal(self):
        """Why the job must not run this run (checked when it runs, whoever queued it), or None."""
        requester = self.user_id
        allowed = requester._is_superuser() or (requester.active and requester.has_group(MANAGER_GROUP))
        if not self.dry_run and not allowed:  # (the superuser, archived by Odoo, is code: odoo shell, scripts)
            return self.env._(
                "Refused: a real import writes the shadow copy and only a Fusion Billing administrator may "
                "ask for one; %(user)s, who asked for this one, is not a Fusion Billing administrator "
                "(now). Nothing was imported.", user=requester.name)
        return None

    def _execute(self, started):
        """The run itself: one consistent source snapshot, one transaction (a savepoint if dry)."""
        notes = nexacloud_import.source_dsn(self.env)[1]
        company = self.company_id
        env = self.env(su=True, context=dict(self.env.context, fusion_billing_dry_run=self.dry_run,
                                             allowed_company_ids=[company.id]))
        source = nexacloud_import.open_source(env)
        with source:
            try:
                if self.dry_run:
                    try:
                        with self.env.cr.savepoint():
                            service = nexacloud_import.nexacloud_service(env, company)
                            result = ImportRun(env, service, self._report_progress).run(source)
                            raise _DryRunRollback
                    except _DryRunRollback:
                        self.env.invalidate_all()
                    service = nexacloud_import.nexacloud_service(env, company, create=False)
                else:
                    service = nexacloud_import.nexacloud_service(env, company)
                    result = ImportRun(env, service, self._report_progress).run(source)
            except nexacloud.SourceError as error:
                raise UserError(str(error)) from None
        self._store(result, notes, service, started)
        if not self.dry_run:
            service.message_post(body=Markup("%s<br/>%s") % (self.banner_message, _render_counts(result.counts, notes)))

    def _store(self, result, notes, service, started):
        """Keep the run's figures and reported rows on this record."""
        counts = result.counts
        failed = sum(c["failed"] for c in counts.values())
        skipped = sum(c["skipped"] for c in counts.values())
        warnings = sum(1 for line in result.lines if line[3] == "warning")
        created = sum(c["created"] for c in counts.values())
        updated = sum(c["updated"] for c in counts.values())
        what = self.env._("Dry run (nothing was saved)") if self.dry_run else self.env._("Import")
        if failed:
            banner, message = "danger", self.env._(
                "%(what)s: %(failed)s rows failed; they are listed with their reason (the other rows went through).",
                what=what, failed=failed)
        elif skipped or warnings:
            banner, message = "warning", self.env._(
                "%(what)s: %(skipped)s rows skipped on purpose and %(warnings)s warnings; see the reported rows.",
                what=what, skipped=skipped, warnings=warnings)
        else:
            banner, message = "success", self.env._("%(what)s: every row imported cleanly.", what=what)
        message += " " + self.env._("%(created)s created, %(updated)s updated.", created=created, updated=updated)
        billed = result.deleted_users_billed
        if billed["count"]:
            message += " " + self.env._(
                "%(count)s live Stripe subscriptions were skipped because their NexaCloud user is soft-deleted: "
                "Stripe still bills them %(amount)s a month, Odoo will not.", count=billed["count"],
                amount=" + ".join(f"{amount:,.2f} {currency}" for currency, amount in sorted(billed["monthly"].items()))
                or "an unknown amount")
        never_started = result.incomplete_skipped
        if never_started["count"]:
            message += " " + self.env._(
                "Incomplete subscriptions skipped: %(count)s (their first payment never went through, so Stripe bills "
                "them nothing; %(amount)s a month once started).", count=never_started["count"],
                amount=" + ".join(f"{amount:,.2f} {currency}"
                                  for currency, amount in sorted(never_started["monthly"].items())) or "an unknown amount")
        if result.trials_imported:
            message += " " + self.env._(
                "Trials imported: %(count)s (Odoo bills each from the end of its trial, when Stripe first charges it).",
                count=result.trials_imported)
        if notes:
            message += " " + " ".join(notes)
        self.write({
            "state": "done", "banner": banner, "banner_message": message, "service_id": service.id,
            "finished_at": fields.Datetime.now(), "duration": time.monotonic() - started,
            "created_count": created, "updated_count": updated, "failed_count": failed,
            "skipped_count": skipped, "warning_count": warnings,
        })
        self.env["fusion.billing.import.run.count"].create([
            dict(counts[entity], run_id=self.id, entity=entity, sequence=index)
            for index, entity in enumerate(ENTITIES)])
        self.env["fusion.billing.import.run.line"].create([
            {"run_id": self.id, "entity": entity, "source_table": table, "source_id": source_id,
             "outcome": outcome, "reason": reason} for entity, table, source_id, outcome, reason in result.lines])
        if failed and not self.dry_run:
            self._tell_requester(self.env._("NexaCloud import: %s rows failed", failed), message)
        _logger.info("NexaCloud import (%s): %s", "dry run" if self.dry_run else "real run",
                     {entity: {k: v for k, v in c.items() if v} for entity, c in counts.items()})

    def _finish_failed(self, reason, started=None):
        self.write({"state": "failed", "error": reason, "finished_at": fields.Datetime.now(),
                    "duration": time.monotonic() - started if started else 0.0, "banner": "danger",
                    "banner_message": self.env._("Failed: %s", reason)})
        self._tell_requester(self.env._("NexaCloud import failed"), reason)

    def _tell_requester(self, summary, note):
        """An activity for whoever asked for the run: it shows in their activities and on the run.
        No e-mail (a shadow import e-mails nobody; the activity is the notice)."""
        self.with_context(mail_activity_quick_update=True).activity_schedule(
            "mail.mail_activity_data_todo", summary=summary, note=note, user_id=self.user_id.id)

    def _commit(self):
        if batch_jobs.real_transactions(self.env):
            self.env.cr.commit()

    # ------------------------------------------------------------------ buttons
    def action_refresh(self):
        """Reload the form (queued and running runs change in the background)."""
        return True

    def action_open_lines(self):
        """The reported rows as a list (filter, group, export)."""
        self.ensure_one()
        return {"type": "ir.actions.act_window", "name": self.env._("Reported rows of %s", self.display_name),
                "res_model": "fusion.billing.import.run.line", "view_mode": "list",
                "domain": [("run_id", "=", self.id)], "context": {"search_default_group_outcome": 1}}


def _describe_source(env):
    """Where the configured DSN points, without its password (or why it is unusable)."""
    try:
        dsn, notes = nexacloud_import.source_dsn(env)
    except UserError as error:
        return str(error)[:200]
    return " ".join([nexacloud.describe(dsn)] + notes)


def _render_counts(counts, notes):
    head = Markup("").join(Markup("<th class='text-end'>%s</th>") % label.capitalize() for label in OUTCOMES)
    rows = Markup("").join(
        Markup("<tr><td>%s</td>%s</tr>") % (ENTITY_LABELS[entity], Markup("").join(
            Markup("<td class='text-end'>%s</td>") % counts[entity][outcome] for outcome in OUTCOMES))
        for entity in ENTITIES)
    notes_html = Markup("").join(Markup("<p class='text-muted'>%s</p>") % note for note in notes)
    return Markup("<table class='table table-sm'><thead><tr><th>%s</th>%s</tr></thead><tbody>%s</tbody></table>%s") % (
        "", head, rows, notes_html)
