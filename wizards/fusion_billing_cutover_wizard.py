from odoo import api, fields, models


class FusionBillingCutoverWizard(models.TransientModel):
    """Confirms a shadow → live switch after showing the latest reconciliation figures."""

    _name = "fusion.billing.cutover.wizard"
    _description = "Switch a service to live billing"

    service_id = fields.Many2one("fusion.billing.service", required=True, readonly=True)
    period_start = fields.Date(compute="_compute_figures", string="Latest reconciled period")
    match_count = fields.Integer(compute="_compute_figures")
    mismatch_count = fields.Integer(compute="_compute_figures")
    missing_count = fields.Integer(compute="_compute_figures")
    total_abs_delta = fields.Monetary(compute="_compute_figures", currency_field="currency_id")
    currency_id = fields.Many2one(related="service_id.currency_id")

    @api.depends("service_id")
    def _compute_figures(self):
        for wizard in self:
            rows = self.env["fusion.billing.reconciliation"].search(
                [("service_id", "=", wizard.service_id.id)], order="period_start desc")
            latest = rows[:1].period_start
            rows = rows.filtered(lambda r: r.period_start == latest)
            wizard.period_start = latest
            wizard.match_count = len(rows.filtered(lambda r: r.state == "match"))
            wizard.mismatch_count = len(rows.filtered(lambda r: r.state == "mismatch"))
            wizard.missing_count = len(rows.filtered(lambda r: r.state in ("missing_in_odoo", "missing_in_app")))
            wizard.total_abs_delta = sum(rows.mapped("abs_delta"))

    def action_confirm(self):
        self.ensure_one()
        service = self.service_id
        service._fc_set_mode("live", self.env._(
            "Switched to live by %(user)s. Latest reconciliation (%(period)s): %(match)s match, %(mismatch)s "
            "mismatch, %(missing)s missing, total absolute delta %(delta).2f %(currency)s. Imported subscriptions "
            "stay draft until activated.", user=self.env.user.name, period=self.period_start or "none",
            match=self.match_count, mismatch=self.mismatch_count, missing=self.missing_count,
            delta=self.total_abs_delta, currency=service.currency_id.name))
        return {"type": "ir.actions.act_window_close"}
