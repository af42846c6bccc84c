from odoo import api, fields, models

RECONCILIATION_STATES = [
    ("match", "Match"),
    ("mismatch", "Mismatch"),
    ("missing_in_odoo", "Missing in Odoo"),
    ("missing_in_app", "Missing in app"),
]


class FusionBillingReconciliation(models.Model):
    """Dual-run delta for one service, period, customer and subscription: Odoo (shadow) vs the app."""

    _name = "fusion.billing.reconciliation"
    _description = "Dual-run Reconciliation"
    _inherit = ["mail.thread"]
    _order = "period_start desc, service_id, abs_delta desc, id"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    currency_id = fields.Many2one("res.currency", required=True)
    period_start = fields.Date(required=True, index=True)
    period_end = fields.Date(required=True)
    partner_id = fields.Many2one("res.partner", index=True)
    account_link_id = fields.Many2one("fusion.billing.account.link", index=True)
    subscription_id = fields.Many2one("sale.order", index=True)
    external_subscription_id = fields.Char(required=True, help="The subscription's id in the app.")
    odoo_amount = fields.Monetary(tracking=True, help="What Odoo computed in shadow, before tax.")
    odoo_amount_incl_tax = fields.Monetary(help="What Odoo computed in shadow, tax included.")
    app_amount = fields.Monetary(tracking=True, help="What the app billed for the period.")
    delta = fields.Monetary(tracking=True, help="Odoo minus app.")
    abs_delta = fields.Monetary(compute="_compute_abs_delta", store=True, string="Absolute Delta")
    state = fields.Selection(RECONCILIATION_STATES, required=True, index=True, tracking=True)
    explanation = fields.Text()
    run_count = fields.Integer(default=1, help="How many reconciliation runs updated this row.")
    last_run_at = fields.Datetime(default=fields.Datetime.now)

    _row_uniq = models.UniqueIndex(
        "(service_id, period_start, external_subscription_id)",
        "One reconciliation row per service, period and subscription.")

    @api.depends("delta")
    def _compute_abs_delta(self):
        for row in self:
            row.abs_delta = abs(row.delta)
