from odoo import api, fields, models
from odoo.exceptions import UserError

from ..core import periods, reconcile


class FusionBillingCutoverWizard(models.TransientModel):
    """Confirms a shadow → live switch after showing the latest reconciliation's figures by reason.

    Timing differences (renewal timing, import timing, trials) resolve themselves; real
    differences (customers the app bills and Odoo would not, prices, usage…) must be explicitly
    acknowledged before going live, and the acknowledgement is logged on the service.
    """

    _name = "fusion.billing.cutover.wizard"
    _description = "Switch a service to live billing"

    service_id = fields.Many2one("fusion.billing.service", required=True, readonly=True)
    run_id = fields.Many2one("fusion.billing.reconciliation.run", string="Latest reconciliation",
                             compute="_compute_figures")
    period_start = fields.Date(compute="_compute_figures", string="Latest reconciled period")
    run_at = fields.Datetime(compute="_compute_figures", string="Reconciled on")
    last_attempt_failed = fields.Boolean(compute="_compute_figures")
    run_outdated = fields.Boolean(compute="_compute_figures",
                                  help="The figures are from a month before the last one (the last month was not reconciled).")
    line_ids = fields.Many2many("fusion.billing.reconciliation.run.line", compute="_compute_figures",
                                string="Figures by reason")
    row_count = fields.Integer(compute="_compute_figures", string="Rows")
    match_count = fields.Integer(compute="_compute_figures", string="Matches")
    real_count = fields.Integer(compute="_compute_figures", string="Real differences")
    real_amount = fields.Monetary(compute="_compute_figures", string="Real differences (amount)")
    timing_count = fields.Integer(compute="_compute_figures", string="Timing differences")
    timing_amount = fields.Monetary(compute="_compute_figures", string="Timing differences (amount)")
    currency_id = fields.Many2one(related="service_id.currency_id")
    needs_acknowledgement = fields.Boolean(compute="_compute_figures")
    acknowledged = fields.Boolean(
        string="I have reviewed these differences and switch to live anyway",
        help="Required when the latest reconciliation shows real differences (not timing), when there is none, "
             "when the latest attempt failed, or when the last month was not reconciled.")

    @api.depends("service_id")
    def _compute_figures(self):
        Run = self.env["fusion.billing.reconciliation.run"]
        last_month = periods.add_period(fields.Date.context_today(self).replace(day=1), "month", 1, -1)
        for wizard in self:
            latest = Run.search([("service_id", "=", wizard.service_id.id)], limit=1)
            run = latest if latest.state == "done" else Run.search(
                [("service_id", "=", wizard.service_id.id), ("state", "=", "done")], limit=1)
            wizard.run_id = run
            wizard.update({name: run[name] for name in ("period_start", "run_at", "row_count", "match_count",
                                                        "real_count", "real_amount", "timing_count", "timing_amount")})
            wizard.last_attempt_failed = latest.state == "failed"
            wizard.run_outdated = bool(run) and run.period_start < last_month
            wizard.line_ids = run.line_ids.filtered("count")
            # Figures from an older month, or behind a failed attempt, say nothing about today's differences.
            wizard.needs_acknowledgement = not run or bool(run.real_count) or wizard.last_attempt_failed \
                or wizard.run_outdated

    def _fc_unreviewed(self):
        """Why the figures shown do not clear the switch (empty: they do)."""
        self.ensure_one()
        run, reasons = self.run_id, []
        if not run:
            reasons.append(self.env._("the service was never reconciled"))
        if self.last_attempt_failed:
            reasons.append(self.env._("the latest reconciliation attempt failed"))
        if self.run_outdated:
            reasons.append(self.env._("the last month was not reconciled (the latest figures are for %s)",
                                      run.period_start))
        if run.real_count:
            reasons.append(self.env._("%(count)s real differences (%(amount).2f %(currency)s) that timing does not "
                                      "explain", count=run.real_count, amount=run.real_amount,
                                      currency=self.service_id.currency_id.name))
        return reasons

    def action_confirm(self):
        self.ensure_one()
        service = self.service_id
        unreviewed = "; ".join(self._fc_unreviewed())
        if self.needs_acknowledgement and not self.acknowledged:
            raise UserError(self.env._(
                "%(service)s: %(reasons)s. Review this, then tick the acknowledgement to switch to live.",
                service=service.name, reasons=unreviewed))
        run = self.run_id
        figures = "; ".join(
            f"{reconcile.REASONS[line.reason][0]}: {line.count} ({line.amount:.2f} {line.currency_id.name})"
            for line in self.line_ids.sorted(lambda l: (l.kind != reconcile.REAL, -l.count))) or self.env._("none")
        service._fc_set_mode("live", self.env._(
            "Switched to live by %(user)s. Latest reconciliation (%(period)s, run %(run_at)s): %(rows)s rows, "
            "%(match)s match, %(real)s real differences (%(real_amount).2f %(currency)s), %(timing)s timing "
            "differences (%(timing_amount).2f %(currency)s). By reason: %(figures)s.%(ack)s Imported subscriptions "
            "stay draft until activated.", user=self.env.user.name, period=run.period_start or self.env._("none"),
            run_at=run.run_at or self.env._("never"), rows=run.row_count, match=run.match_count, real=run.real_count,
            real_amount=run.real_amount, timing=run.timing_count, timing_amount=run.timing_amount,
            currency=service.currency_id.name, figures=figures,
            ack=(" " + self.env._("%(user)s acknowledged: %(reasons)s.", user=self.env.user.name, reasons=unreviewed))
            if self.needs_acknowledgement else ""))
        return {"type": "ir.actions.act_window_close"}
