from odoo import fields, models


class SaleSubscriptionPlan(models.Model):
    """A recurring plan is also a billing catalog plan when it has a plan code.

    Odoo owns the catalog (base fee, period, usage charges); apps own entitlements
    and refer to the plan by the shared ``x_fc_plan_code``.
    """

    _inherit = "sale.subscription.plan"

    x_fc_service_id = fields.Many2one("fusion.billing.service", string="Billing Service", index="btree_not_null")
    x_fc_plan_code = fields.Char(
        string="Plan Code", index="btree_not_null",
        help="Code the app uses (Lago plan_code) and for its feature entitlements.")
    x_fc_product_id = fields.Many2one(
        "product.product", string="Base Fee Product",
        help="Recurring product invoiced as this plan's base fee (its taxes apply).")
    x_fc_amount = fields.Monetary(
        string="Base Fee", currency_field="x_fc_currency_id", help="Base fee per billing period.")
    x_fc_currency_id = fields.Many2one("res.currency", string="Plan Currency")
    x_fc_charge_ids = fields.One2many("fusion.billing.charge", "plan_id", string="Usage Charges")
    x_fc_source_active = fields.Boolean(
        string="Active in App", default=True,
        help="Whether the app still sells this plan (inactive plans may keep live subscriptions).")

    _x_fc_plan_code_uniq = models.UniqueIndex(
        "(x_fc_service_id, x_fc_plan_code) WHERE x_fc_plan_code IS NOT NULL",
        "A plan code must be unique per billing service.")
