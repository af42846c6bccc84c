from odoo import fields, models

from ..services.activation import OUTCOMES


class FusionBillingActivationRunLine(models.Model):
    """What an activation run did with one draft: written in the same transaction as the order's
    confirmation, once per run and order (unique), which is how a resumed run knows what is done."""

    _name = "fusion.billing.activation.run.line"
    _description = "Subscription Activation Run: Order"
    _order = "run_id desc, id"

    run_id = fields.Many2one("fusion.billing.activation.run", required=True, ondelete="cascade", index=True)
    order_id = fields.Many2one("sale.order", string="Subscription", required=True, ondelete="cascade", index=True)
    outcome = fields.Selection(OUTCOMES, required=True, index=True)
    reason = fields.Text()
    with_token = fields.Boolean(string="Saved Payment Method")
    in_trial = fields.Boolean()

    _run_order_uniq = models.UniqueIndex("(run_id, order_id)", "A run handles each order once.")
