from markupsafe import Markup, escape

from odoo import api, fields, models
from odoo.exceptions import AccessError, UserError

from ..core import nexacloud
from ..services import nexacloud_import

MANAGER_GROUP = "fusion_centralize_billing.group_fusion_billing_manager"


class FusionBillingNexacloudImport(models.TransientModel):
    """Fusion Billing → Import from NexaCloud → Run an Import: Test Connection, then queue a dry or
    real run. The run itself, its result and its history are ``fusion.billing.import.run``."""

    _name = "fusion.billing.nexacloud.import"
    _description = "Import from NexaCloud"

    dry_run = fields.Boolean(
        default=True, help="Compute the whole import and report it, then roll everything back.")
    source_display = fields.Char(string="Source", compute="_compute_source_display")
    connection_report = fields.Html(readonly=True, sanitize=False)
    run_id = fields.Many2one("fusion.billing.import.run", string="Queued Run", readonly=True)

    @api.depends_context("uid")
    def _compute_source_display(self):
        for wizard in self:
            try:
                dsn, notes = nexacloud_import.source_dsn(self.env)
                wizard.source_display = " ".join([nexacloud.describe(dsn)] + notes)
            except UserError as error:
                wizard.source_display = str(error)

    def action_test_connection(self):
        """Reachability, server, role privileges, required columns and row counts. Imports nothing."""
        self.ensure_one()
        dsn, notes = nexacloud_import.source_dsn(self.env)
        report = nexacloud.test_connection(dsn)
        self.connection_report = _render_connection(report, notes)
        return {"type": "ir.actions.act_window", "res_model": self._name, "res_id": self.id,
                "view_mode": "form", "target": "new", "name": self.env._("Import from NexaCloud")}

    def action_run_import(self):
        """Queue the run for the background job and show it (the button returns at once)."""
        self.ensure_one()
        if not self.dry_run and not self.env.user.has_group(MANAGER_GROUP):
            raise AccessError(self.env._("Only Fusion Billing administrators can run a real import; "
                                         "tick Dry run to preview it."))
        nexacloud_import.open_source(self.env).close()  # fail fast: unreachable source or missing columns
        if nexacloud_import.import_running(self.env.cr):
            raise UserError(self.env._(
                "A NexaCloud import is already running (another user or worker started it). "
                "Wait for it to finish, then run again: re-runs are safe."))
        Run = self.env["fusion.billing.import.run"]
        # Nothing holds the import lock, so nothing is really running: a "running" run died with its worker.
        Run._fail_interrupted()
        if Run.sudo().search_count([("state", "in", ("queued", "running"))], limit=1):
            raise UserError(self.env._(
                "A NexaCloud import is already queued or running. Wait for it to finish, then run again: "
                "re-runs are safe."))
        run = Run._create_queued(self.dry_run)
        self.run_id = run
        run.sudo()._report_progress(self.env._("queued, starting shortly"))
        self.env.ref("fusion_centralize_billing.ir_cron_nexacloud_import").sudo()._trigger()
        return {"type": "ir.actions.act_window", "res_model": run._name, "res_id": run.id, "view_mode": "form",
                "target": "current", "name": run.display_name}


# ---------------------------------------------------------------------------- rendering
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
