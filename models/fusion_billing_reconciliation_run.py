from markupsafe import Markup

from odoo import api, fields, models

from ..core import reconcile
from .fusion_billing_reconciliation import KIND_SELECTION


class FusionBillingReconciliationRun(models.Model):
    """One reconciliation run of a service and period: its figures per reason, and how they moved
    since the previous run of that service and period. A failed run keeps its error."""

    _name = "fusion.billing.reconciliation.run"
    _description = "Dual-run Reconciliation Run"
    _order = "run_at desc, id desc"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade", index=True, readonly=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    currency_id = fields.Many2one(related="service_id.currency_id")
    period_start = fields.Date(required=True, index=True, readonly=True)
    period_end = fields.Date(required=True, readonly=True)
    run_at = fields.Datetime(required=True, default=fields.Datetime.now, readonly=True)
    user_id = fields.Many2one("res.users", string="Run by", default=lambda self: self.env.user, readonly=True)
    state = fields.Selection([("done", "Done"), ("failed", "Failed")], required=True, default="done", index=True,
                             readonly=True)
    error = fields.Text(readonly=True)
    duration = fields.Float(string="Duration (s)", readonly=True, digits=(16, 1))
    row_count = fields.Integer(string="Rows", readonly=True)
    match_count = fields.Integer(string="Matches", readonly=True)
    real_count = fields.Integer(string="Real differences", readonly=True,
                                help="Rows whose reason is a real difference (not timing).")
    timing_count = fields.Integer(string="Timing differences", readonly=True)
    real_amount = fields.Monetary(string="Real differences (amount)", readonly=True,
                                  help="Sum of the absolute deltas of real differences in the service's currency "
                                       "(other currencies: see the lines).")
    timing_amount = fields.Monetary(string="Timing differences (amount)", readonly=True)
    previous_run_id = fields.Many2one("fusion.billing.reconciliation.run", readonly=True,
                                      help="The previous successful run of this service and period.")
    line_ids = fields.One2many("fusion.billing.reconciliation.run.line", "run_id", string="Figures by reason",
                               readonly=True)
    summary_html = fields.Html(compute="_compute_summary_html", sanitize=False, string="Figures")

    @api.depends("line_ids", "state")
    def _compute_summary_html(self):
        for run in self:
            run.summary_html = run._fc_render()

    @api.depends("service_id", "period_start", "run_at")
    def _compute_display_name(self):
        for run in self:
            run.display_name = f"{run.service_id.name or ''} {run.period_start or ''} ({run.run_at or ''})"

    def _fc_render(self):
        """The run's figures per reason as a small table: count, amount, change since the previous run."""
        self.ensure_one()
        if self.state == "failed":
            return Markup("<div class='alert alert-danger mb-0'>%s</div>") % (self.error or "")
        if not self.line_ids:
            return Markup("<p class='text-success mb-0'>%s</p>") % self.env._(
                "Every row matches (%s rows).", self.row_count)
        rows = Markup("").join(
            Markup("<tr><td>%s</td><td>%s</td><td class='text-end'>%s</td><td class='text-end'>%s</td>"
                   "<td class='text-end'>%s</td><td class='text-end'>%s</td></tr>") % (
                dict(line._fields["reason"].selection)[line.reason], dict(KIND_SELECTION)[line.kind], line.count,
                f"{line.amount:,.2f} {line.currency_id.name}", _signed(line.count_change),
                _signed(line.amount_change, money=True))
            for line in self.line_ids.sorted(lambda l: (l.kind != reconcile.REAL, -l.count)))
        head = Markup("").join(Markup("<th%s>%s</th>") % (Markup(" class='text-end'") if n > 1 else "", label)
                               for n, label in enumerate([self.env._("Reason"), self.env._("Kind"),
                                                          self.env._("Rows"), self.env._("Amount"),
                                                          self.env._("Rows since last run"),
                                                          self.env._("Amount since last run")]))
        return Markup("<table class='table table-sm mb-0'><thead><tr>%s</tr></thead><tbody>%s</tbody></table>") % (
            head, rows)

    # ------------------------------------------------------------------ recording
    @api.model
    def _fc_previous(self, service, period_start):
        return self.search([("service_id", "=", service.id), ("period_start", "=", period_start),
                            ("state", "=", "done")], limit=1)

    @api.model
    def _fc_record(self, service, period_start, period_end, summary, duration):
        """Keep a run's figures (``core.reconcile.summarise``); lines per reason and currency, with
        the change since the previous run (a reason that disappeared gets a line of 0)."""
        previous = self._fc_previous(service, period_start)
        before = {(line.reason, line.currency_id.name): line for line in previous.line_ids}
        currencies = {c.name: c for c in self.env["res.currency"].with_context(active_test=False).search(
            [("name", "in", list({currency for _reason, currency in set(summary["reasons"]) | set(before)}))])}
        lines = []
        for key in sorted(set(summary["reasons"]) | set(before), key=str):
            reason, currency = key
            figures = summary["reasons"].get(key, {"count": 0, "amount": 0, "delta": 0})
            old = before.get(key)
            lines.append({
                "reason": reason, "kind": reconcile.REASONS[reason][1],
                "currency_id": (currencies.get(currency) or service.currency_id).id,
                "count": figures["count"], "amount": float(figures["amount"]), "delta": float(figures["delta"]),
                "count_change": figures["count"] - (old.count if old else 0),
                "amount_change": float(figures["amount"]) - (old.amount if old else 0.0),
            })
        own = [line for line in lines if line["currency_id"] == service.currency_id.id]
        counts = summary["counts"]
        return self.sudo().create({
            "service_id": service.id, "period_start": period_start, "period_end": period_end,
            "user_id": self.env.uid, "duration": duration, "row_count": sum(counts.values()),
            "match_count": counts.get("match", 0),
            "real_count": sum(line["count"] for line in lines if line["kind"] == reconcile.REAL),
            "timing_count": sum(line["count"] for line in lines if line["kind"] == reconcile.TIMING),
            "real_amount": sum(line["amount"] for line in own if line["kind"] == reconcile.REAL),
            "timing_amount": sum(line["amount"] for line in own if line["kind"] == reconcile.TIMING),
            "previous_run_id": previous.id or False,
            "line_ids": [fields.Command.create(line) for line in lines],
        }).with_env(self.env)

    @api.model
    def _fc_record_failure(self, service, period_start, period_end, error):
        """A run that failed: kept with its error (Needs attention) and noted on the service."""
        text = " ".join(str(error).split())[:1000] or error.__class__.__name__
        run = self.sudo().create({"service_id": service.id, "period_start": period_start, "period_end": period_end,
                                  "state": "failed", "error": text})
        service.sudo().message_post(body=self.env._(
            "The reconciliation of %(start)s failed and was rolled back (the other services were reconciled): "
            "%(error)s", start=period_start, error=text))
        return run

    @api.model
    def _fc_failures_since_success(self, service, period_start):
        """Failed runs of a service and period since its last successful one."""
        last = self._fc_previous(service, period_start)
        domain = [("service_id", "=", service.id), ("period_start", "=", period_start), ("state", "=", "failed")]
        if last:
            domain.append(("id", ">", last.id))
        return self.search_count(domain)

    def action_view_rows(self):
        """The reconciliation rows of this run's service and period, grouped by reason."""
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "fusion_centralize_billing.fusion_billing_reconciliation_action")
        action["domain"] = [("service_id", "=", self.service_id.id), ("period_start", "=", self.period_start)]
        action["context"] = {"search_default_problems": 1, "search_default_by_reason": 1}
        return action


def _signed(value, money=False):
    if not value:
        return "–"
    return f"{value:+,.2f}" if money else f"{value:+d}"
