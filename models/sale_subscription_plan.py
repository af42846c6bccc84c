from odoo import fields, models

from ..core import money


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

    # ------------------------------------------------------------------ helpers
    def _fc_currency(self):
        self.ensure_one()
        return self.x_fc_currency_id or self.x_fc_service_id.currency_id or self.env.company.currency_id

    def _fc_amount_cents(self):
        self.ensure_one()
        return money.to_minor_units(self.x_fc_amount, self._fc_currency().decimal_places)

    def _fc_base_fee_line_values(self):
        self.ensure_one()
        return {"product_id": self.x_fc_product_id.id, "price_unit": self.x_fc_amount, "product_uom_qty": 1}

    def _fc_interval(self):
        """Lago interval name of the billing period."""
        self.ensure_one()
        unit, value = self.billing_period_unit, self.billing_period_value
        return {("week", 1): "weekly", ("month", 1): "monthly", ("month", 3): "quarterly",
                ("month", 6): "semiannual", ("year", 1): "yearly"}.get((unit, value), f"{value}_{unit}")

    def _api_values(self):
        self.ensure_one()
        return {
            "lago_id": str(self.id),
            "name": self.name,
            "invoice_display_name": self.name,
            "code": self.x_fc_plan_code,
            "interval": self._fc_interval(),
            "description": None,
            "amount_cents": self._fc_amount_cents(),
            "amount_currency": self._fc_currency().name,
            "trial_period": 0,
            "pay_in_advance": True,
            "bill_charges_monthly": None,
            "created_at": self.create_date,
            "charges": [charge._api_values() for charge in self.x_fc_charge_ids],
        }
