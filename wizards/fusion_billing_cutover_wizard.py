from odoo import api, fields, models
from odoo.exceptions import UserError

from ..core import reconcile


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
        help="Required when the latest reconciliation shows real differences (not timing), or when there is none.")

    @api.depends("service_id")
    def _compute_figures(self):
        Run = self.env["fusion.billing.reconciliation.run"]
        for wizard in self:
            latest = Run.search([("service_id", "=", wizard.service_id.id)], limit=1)
            run = latest if latest.state == "done" else Run.search(
                [("service_id", "=", wizard.service_id.id), ("state", "=", "done")], limit=1)
            wizard.run_id = run
            wizard.update({name: run[name] for name in ("period_start", "run_at", "row_count", "match_count",
                                                        "real_count", "real_amount", "timing_count", "timing_amount")})
            wizard.last_attempt_failed = latest.state == "failed"
            wizard.line_ids = run.line_ids.filtered("count")
            wizard.needs_acknowledgement = not run or bool(run.real_count)

    def action_confirm(self):
        self.ensure_one()
        service = self.service_id
        if self.needs_acknowledgement and not self.acknowledged:
            raise UserError(self.env._(
                "The latest reconciliation of %(service)s shows %(count)s real differences (%(amount).2f %(currency)s) "
                "that timing does not explain, or there is none: review them, then tick the acknowledgement to "
                "switch to live.", service=service.name, count=self.real_count, amount=self.real_amount,
                currency=service.currency_id.name))
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
            ack=(" " + self.env._("%s acknowledged the unexplained real differences.", self.env.user.name))
            if self.needs_acknowledgement else ""))
        return {"type": "ir.actions.act_window_close"}
