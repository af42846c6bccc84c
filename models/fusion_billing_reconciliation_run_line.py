from odoo import fields, models

from .fusion_billing_reconciliation import KIND_SELECTION, REASON_SELECTION


class FusionBillingReconciliationRunLine(models.Model):
    """A run's figures for one reason (and currency): how many rows, how much, and the change
    since the previous run. Pivot and graph them by run to follow a reason from run to run."""

    _name = "fusion.billing.reconciliation.run.line"
    _description = "Dual-run Reconciliation Run: figures by reason"
    _order = "run_id desc, kind desc, count desc, id"

    run_id = fields.Many2one("fusion.billing.reconciliation.run", required=True, ondelete="cascade", index=True)
    service_id = fields.Many2one(related="run_id.service_id", store=True, index=True)
    company_id = fields.Many2one(related="run_id.company_id", store=True)
    period_start = fields.Date(related="run_id.period_start", store=True)
    run_at = fields.Datetime(related="run_id.run_at", store=True)
    reason = fields.Selection(REASON_SELECTION, required=True)
    kind = fields.Selection(KIND_SELECTION, required=True)
    currency_id = fields.Many2one("res.currency", required=True)
    count = fields.Integer(string="Rows", aggregator="sum")
    amount = fields.Monetary(help="Sum of the rows' absolute deltas.")
    delta = fields.Monetary(string="Net delta", help="Sum of the rows' deltas (Odoo minus app).")
    count_change = fields.Integer(string="Rows since last run", aggregator="sum")
    amount_change = fields.Monetary(string="Amount since last run")
