# TEST-ONLY STAND-IN (see ../../README.md): public sale_subscription fields only, no invoicing engine.
from odoo import api, fields, models

SUBSCRIPTION_STATES = [
    ("1_draft", "Quotation"),
    ("2_renewal", "Renewal Quotation"),
    ("3_progress", "In Progress"),
    ("4_paused", "Paused"),
    ("5_renewed", "Renewed"),
    ("6_churn", "Churned"),
    ("7_upsell", "Upsell"),
]


class SaleOrder(models.Model):
    _inherit = "sale.order"

    plan_id = fields.Many2one("sale.subscription.plan", string="Recurring Plan", index="btree_not_null")
    is_subscription = fields.Boolean(compute="_compute_is_subscription", store=True)
    subscription_state = fields.Selection(
        SUBSCRIPTION_STATES, compute="_compute_subscription_state", store=True, readonly=False,
        index=True, copy=False)
    start_date = fields.Date(copy=False)
    next_invoice_date = fields.Date(copy=False)
    last_invoice_date = fields.Date(copy=False)
    end_date = fields.Date(copy=False)
    payment_token_id = fields.Many2one("payment.token", copy=False)
    payment_exception = fields.Boolean(copy=False)

    @api.depends("plan_id")
    def _compute_is_subscription(self):
        for order in self:
            order.is_subscription = bool(order.plan_id)

    @api.depends("is_subscription")
    def _compute_subscription_state(self):
        for order in self:
            if order.is_subscription and not order.subscription_state:
                order.subscription_state = "1_draft"
            elif not order.is_subscription:
                order.subscription_state = False

    def action_confirm(self):
        res = super().action_confirm()
        for order in self.filtered("is_subscription"):
            order.write({
                "subscription_state": "3_progress",
                "start_date": order.start_date or fields.Date.context_today(order),
                "next_invoice_date": order.next_invoice_date or order.start_date or fields.Date.context_today(order),
            })
        return res

    def set_close(self, close_reason_id=None, **kwargs):
        self.write({"subscription_state": "6_churn", "end_date": fields.Date.context_today(self)})
        return True
