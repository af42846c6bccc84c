import logging

from markupsafe import Markup, escape

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError

from ..core import nexacloud
from ..models.batch_jobs import real_transactions
from ..services.nexacloud_import import ENTITIES, OUTCOMES, ImportRun

_logger = logging.getLogger(__name__)

DSN_PARAMETER = "fusion_billing.nexacloud_dsn"
PROGRESS_PARAMETER = "fusion_billing.nexacloud_import_progress"
IMPORT_LOCK = 0x46434249  # pg advisory lock key ("FCBI"): one NexaCloud import at a time, across workers
ENTITY_LABELS = {
    "metrics": "Billable metrics", "plans": "Catalog plans", "charges": "Usage charges", "partners": "Contacts",
    "account_links": "Account links (users)", "subscriptions": "Subscriptions",
    "deployments": "Deployments", "usage_baselines": "Usage baselines",
}


class _DryRunRollback(Exception):
    """Raised inside the dry run's savepoint so that everything it wrote is rolled back."""


class FusionBillingNexacloudImport(models.TransientModel):
    """Fusion Billing → Import from NexaCloud: Test Connection, dry run, real run (shadow copy)."""

    _name = "fusion.billing.nexacloud.import"
    _description = "Import from NexaCloud"

    dry_run = fields.Boolean(
        default=True, help="Compute the whole import and report it, then roll everything back.")
    state = fields.Selection(
        [("draft", "Ready"), ("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")],
        default="draft", readonly=True,
        help="Runs happen in the background (a scheduled action), so a large import never hits the "
             "web worker's time limit; refresh to follow it.")
    progress = fields.Char(compute="_compute_progress")
    error = fields.Text(readonly=True)
    source_display = fields.Char(string="Source", compute="_compute_source_display")
    connection_report = fields.Html(readonly=True, sanitize=False)
    result_summary = fields.Html(readonly=True, sanitize=False)
    banner = fields.Selection([("success", "Green"), ("warning", "Amber"), ("danger", "Red")], readonly=True)
    banner_message = fields.Char(readonly=True)
    ran_at = fields.Datetime(readonly=True)
    was_dry_run = fields.Boolean(readonly=True)
    line_ids = fields.One2many("fusion.billing.nexacloud.import.line", "wizard_id", string="Reported Rows")
    failed_count = fields.Integer(readonly=True)
    skipped_count = fields.Integer(readonly=True)
    warning_count = fields.Integer(readonly=True)

    @api.depends("state")
    def _compute_progress(self):
        # Kept in a parameter, not on this row: the run's own transaction updates the row at the
        # end, and a concurrent update of the same row would make that fail (repeatable read).
        wizard_id, _sep, text = (self.env["ir.config_parameter"].sudo().get_param(PROGRESS_PARAMETER) or "").partition(":")
        for wizard in self:
            wizard.progress = text if wizard.state in ("queued", "running") and wizard_id == str(wizard.id) else False

    @api.depends_context("uid")
    def _compute_source_display(self):
        for wizard in self:
            try:
                dsn, notes = wizard._source_dsn()
                wizard.source_display = " ".join([nexacloud.describe(dsn)] + notes)
            except UserError as error:
                wizard.source_display = str(error)

    # ------------------------------------------------------------------ helpers
    def _source_dsn(self):
        """(libpq DSN, notes) from the system parameter; a readable UserError when unusable."""
        raw = self.env["ir.config_parameter"].sudo().get_param(DSN_PARAMETER)
        try:
            return nexacloud.normalise_dsn(raw)
        except nexacloud.SourceError as error:
            raise UserError(str(error)) from None

    def _open_source(self):
        try:
            return nexacloud.Source(self._source_dsn()[0])
        except nexacloud.SourceError as error:
            raise UserError(str(error)) from None

    def _reopen(self):
        return {"type": "ir.actions.act_window", "res_model": self._name, "res_id": self.id,
                "view_mode": "form", "target": "new", "name": self.env._("Import from NexaCloud")}

    def _service(self):
        """The NexaCloud service of this company (created in shadow mode on the first import)."""
        Service = self.env["fusion.billing.service"].sudo().with_context(active_test=False)
        company = self.env.company
        return Service.search([("code", "=", "nexacloud"), ("company_id", "=", company.id)], limit=1) or \
            Service.create({"name": "NexaCloud", "code": "nexacloud", "billing_mode": "shadow",
                            "company_id": company.id})

    def _acquire_lock(self):
        self.env.cr.execute("SELECT pg_try_advisory_xact_lock(%s)", [IMPORT_LOCK])
        if not self.env.cr.fetchone()[0]:
            raise UserError(self.env._(
                "A NexaCloud import is already running (another user or worker started it). "
                "Wait for it to finish, then run again: re-runs are safe."))

    # ------------------------------------------------------------------ actions
    def action_test_connection(self):
        """Reachability, server, role privileges, required columns and row counts. Imports nothing."""
        self.ensure_one()
        dsn, notes = self._source_dsn()
        report = nexacloud.test_connection(dsn)
        self.connection_report = _render_connection(report, notes)
        return self._reopen()

    def action_run_import(self):
        """Queue the run for the background job (the button returns at once)."""
        self.ensure_one()
        if not self.dry_run and not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_manager"):
            raise AccessError(self.env._("Only Fusion Billing administrators can run a real import; "
                                         "tick Dry run to preview it."))
        self._open_source().close()  # fail fast: unreachable source or missing columns
        self._acquire_lock()
        # We hold the lock, so nothing is really running: a "running" run died with its worker.
        self.sudo().search([("state", "=", "running")]).write({"state": "failed", "error": self.env._(
            "Interrupted (the server stopped or the job hit its time limit): nothing of it was saved. Run again.")})
        if self.sudo().search_count([("state", "=", "queued"), ("id", "!=", self.id)]):
            raise UserError(self.env._(
                "A NexaCloud import is already queued or running. Wait for it to finish, then run again: "
                "re-runs are safe."))
        self.write({"state": "queued", "error": False})
        self._report_progress(self.env._("queued, starting shortly"))
        self.env.ref("fusion_centralize_billing.ir_cron_nexacloud_import").sudo()._trigger()
        return self._reopen()

    def action_refresh(self):
        return self._reopen()

    @api.model
    def _cron_run_queued_imports(self):
        """Run queued imports one after the other, each in its own transaction."""
        for wizard in self.search([("state", "=", "queued")], order="id"):
            wizard.state = "running"
            wizard._report_progress(self.env._("running since %s UTC", fields.Datetime.now()))
            self._commit()
            try:
                wizard.with_user(wizard.create_uid)._execute()
                wizard.state = "done"
            except UserError as error:
                self._rollback()
                wizard.write({"state": "failed", "error": str(error)})
            self._commit()

    def _report_progress(self, text):
        """Visible progress, committed apart from the run's own (possibly rolled back) transaction."""
        if not real_transactions(self.env):
            return
        with self.env.registry.cursor() as cr:
            api.Environment(cr, self.env.uid, {})["ir.config_parameter"].sudo().set_param(
                PROGRESS_PARAMETER, f"{self.id}:{text}")

    def _commit(self):
        if real_transactions(self.env):
            self.env.cr.commit()

    def _rollback(self):
        if real_transactions(self.env):
            self.env.cr.rollback()
        else:
            self.env.invalidate_all()

    def _execute(self):
        """The run itself: one consistent source snapshot, one Odoo transaction (or savepoint if dry)."""
        self.ensure_one()
        notes = self._source_dsn()[1]
        self._acquire_lock()
        source = self._open_source()
        env = self.sudo().env(context=dict(self.env.context, fusion_billing_dry_run=self.dry_run))
        with source:
            try:
                if self.dry_run:
                    try:
                        with self.env.cr.savepoint():
                            run = ImportRun(env, self.with_env(env)._service(), self._report_progress).run(source)
                            raise _DryRunRollback
                    except _DryRunRollback:
                        self.env.invalidate_all()
                else:
                    service = self.with_env(env)._service()
                    run = ImportRun(env, service, self._report_progress).run(source)
            except nexacloud.SourceError as error:
                raise UserError(str(error)) from None
        self._store(run, notes)
        if not self.dry_run:
            service.message_post(body=Markup("%s<br/>%s") % (self.banner_message, self.result_summary))
        return self._reopen()

    def _store(self, run, notes):
        counts = run.counts
        failed = sum(c["failed"] for c in counts.values())
        skipped = sum(c["skipped"] for c in counts.values())
        warnings = sum(1 for line in run.lines if line[3] == "warning")
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
        billed = run.deleted_users_billed
        if billed["count"]:
            message += " " + self.env._(
                "%(count)s live Stripe subscriptions were skipped because their NexaCloud user is soft-deleted: "
                "Stripe still bills them %(amount)s a month, Odoo will not.", count=billed["count"],
                amount=" + ".join(f"{amount:,.2f} {currency}" for currency, amount in sorted(billed["monthly"].items()))
                or "an unknown amount")
        self.line_ids.unlink()
        self.write({
            "banner": banner, "banner_message": message, "ran_at": fields.Datetime.now(),
            "was_dry_run": self.dry_run, "failed_count": failed, "skipped_count": skipped,
            "warning_count": warnings, "result_summary": _render_counts(counts, notes),
        })
        self.env["fusion.billing.nexacloud.import.line"].create([
            {"wizard_id": self.id, "entity": entity, "source_table": table, "source_id": source_id,
             "outcome": outcome, "reason": reason} for entity, table, source_id, outcome, reason in run.lines])
        _logger.info("NexaCloud import (%s): %s", "dry run" if self.dry_run else "real run",
                     {entity: {k: v for k, v in c.items() if v} for entity, c in counts.items()})

    def action_open_lines(self):
        """The reported rows as a list (filter, group, export)."""
        self.ensure_one()
        return {"type": "ir.actions.act_window", "name": self.env._("Reported rows"),
                "res_model": "fusion.billing.nexacloud.import.line", "view_mode": "list",
                "domain": [("wizard_id", "=", self.id)], "context": {"search_default_group_outcome": 1}}


class FusionBillingNexacloudImportLine(models.TransientModel):
    _name = "fusion.billing.nexacloud.import.line"
    _description = "NexaCloud import: reported row"
    _order = "outcome, entity, source_id"

    wizard_id = fields.Many2one("fusion.billing.nexacloud.import", required=True, ondelete="cascade", index=True)
    entity = fields.Selection([(key, label) for key, label in ENTITY_LABELS.items()], required=True)
    source_table = fields.Char(required=True)
    source_id = fields.Char(string="Source ID", required=True)
    outcome = fields.Selection([("failed", "Failed"), ("skipped", "Skipped"), ("warning", "Warning")],
                               required=True)
    reason = fields.Char(required=True)


# ---------------------------------------------------------------------------- rendering
def _render_counts(counts, notes):
    head = Markup("").join(Markup("<th class='text-end'>%s</th>") % label.capitalize() for label in OUTCOMES)
    rows = Markup("").join(
        Markup("<tr><td>%s</td>%s</tr>") % (ENTITY_LABELS[entity], Markup("").join(
            Markup("<td class='text-end'>%s</td>") % counts[entity][outcome] for outcome in OUTCOMES))
        for entity in ENTITIES)
    notes_html = Markup("").join(Markup("<p class='text-muted'>%s</p>") % note for note in notes)
    return Markup("<table class='table table-sm'><thead><tr><th>%s</th>%s</tr></thead><tbody>%s</tbody></table>%s") % (
        "", head, rows, notes_html)


def _render_connection(report, notes):
    parts = []
    for note in notes:
        parts.append(Markup("<div class='alert alert-info'>%s</div>") % note)
    if report["error"] and not report["server_version"]:
        parts.append(Markup("<div class='alert alert-danger'><strong>Not reachable.</strong> %s</div>") % report["error"])
        return Markup("").join(parts)
    level = "success" if report["ok"] and not report["warnings"] else "warning" if report["ok"] else "danger"
    parts.append(Markup("<div class='alert alert-%s'><strong>%s</strong> %s</div>") % (
        level, "Reachable." if report["ok"] else "Reachable, but not importable.", report["error"] or ""))
    parts.append(Markup("<p>Source <code>%s</code> · PostgreSQL %s · role <code>%s</code>%s</p>") % (
        report["dsn"], report["server_version"], report["role"], " (superuser)" if report["superuser"] else ""))
    for warning in report["warnings"]:
        parts.append(Markup("<div class='alert alert-warning'>%s</div>") % warning)
    if not report["warnings"]:
        parts.append(Markup("<p class='text-success'>Least privilege: the role can only read.</p>"))
    rows = []
    for table, entry in report["tables"].items():
        if not entry["present"]:
            state = escape("missing table")
        elif entry["error"]:
            state = escape(entry["error"])
        elif entry["missing"]:
            state = escape("missing required columns: " + ", ".join(entry["missing"]))
        else:
            state = escape("ok")
        rows.append(Markup("<tr><td><code>%s</code></td><td class='text-end'>%s</td><td>%s</td></tr>") % (
            table, "" if entry["rows"] is None else entry["rows"], state))
    parts.append(Markup("<table class='table table-sm'><thead><tr><th>Table</th><th class='text-end'>Rows</th>"
                        "<th>Status</th></tr></thead><tbody>%s</tbody></table>") % Markup("").join(rows))
    return Markup("").join(parts)
