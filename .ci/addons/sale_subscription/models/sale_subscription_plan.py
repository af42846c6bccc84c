# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import api, fields, models


class SaleSubscriptionPlan(models.Model):
    """A Recurring Plan (DOC: subscriptions.rst, "Set up recurring plans")."""

    _name = "sale.subscription.plan"
    _description = "Recurring Plan"

    name = fields.Char(required=True, translate=True)
    active = fields.Boolean(default=True)
    company_id = fields.Many2one("res.company")
    # DOC subscriptions.rst "DETAILS section": Billing Period (Weeks, Months or Years; Days are for rentals).
    billing_period_value = fields.Integer(required=True, default=1)
    billing_period_unit = fields.Selection(
        [("week", "Weeks"), ("month", "Months"), ("year", "Years")],
        required=True, default="month")
    billing_period_display = fields.Char(compute="_compute_billing_period_display")
    # DOC subscriptions.rst "DETAILS section": Automatic Closing, days after which an unpaid
    # subscription closes (technical name not documented; chosen here).
    auto_close_limit = fields.Integer(string="Automatic Closing", default=15)
    # DOC closing.rst: the Closable option lets customers close their subscription from the portal
    # (technical name not documented; chosen here).
    user_closable = fields.Boolean(string="Closable")

    @api.depends("billing_period_value", "billing_period_unit")
    def _compute_billing_period_display(self):
        for plan in self:
            plan.billing_period_display = f"{plan.billing_period_value} {plan.billing_period_unit}s"
