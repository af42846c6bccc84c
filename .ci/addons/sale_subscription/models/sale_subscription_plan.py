# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import api, fields, models


class SaleSubscriptionPlan(models.Model):
    _name = "sale.subscription.plan"
    _description = "Recurring Plan"

    name = fields.Char(required=True, translate=True)
    active = fields.Boolean(default=True)
    company_id = fields.Many2one("res.company")
    billing_period_value = fields.Integer(required=True, default=1)
    billing_period_unit = fields.Selection(
        [("week", "Weeks"), ("month", "Months"), ("year", "Years")],
        required=True, default="month")
    billing_period_display = fields.Char(compute="_compute_billing_period_display")

    @api.depends("billing_period_value", "billing_period_unit")
    def _compute_billing_period_display(self):
        for plan in self:
            plan.billing_period_display = f"{plan.billing_period_value} {plan.billing_period_unit}s"
