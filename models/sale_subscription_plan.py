from odoo import api, fields, models
from odoo.exceptions import ValidationError

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
        string="Base Fee", currency_field="x_fc_currency_id",
        compute="_compute_x_fc_amount", inverse="_inverse_x_fc_amount",
        help="Base fee per billing period. It is the plan's native recurring price: a price rule of the "
             "service's pricelist for the base fee product with this Recurring Plan, so Update Prices, "
             "renewals and quantity changes keep it.")
    x_fc_currency_id = fields.Many2one("res.currency", string="Plan Currency")
    x_fc_charge_ids = fields.One2many("fusion.billing.charge", "plan_id", string="Usage Charges")
    x_fc_source_active = fields.Boolean(
        string="Active in App", default=True,
        help="Whether the app still sells this plan (inactive plans may keep live subscriptions).")

    _x_fc_plan_code_uniq = models.UniqueIndex(
        "(x_fc_service_id, x_fc_plan_code) WHERE x_fc_plan_code IS NOT NULL",
        "A plan code must be unique per billing service.")

    # ------------------------------------------------------------------ base fee (native recurring price)
    # Odoo 19 keeps recurring prices as price rules with a Recurring Plan (pricelist "Recurring
    # Prices" tab, the plan's "Pricing" tab): DOC sales/products_prices/prices/pricing.rst and
    # sales/subscriptions.rst; technical names from public Odoo code (odoo/odoo PR #255303, the
    # odoo/tutorials pricelist_refactor_subscription prototype). See tests/ENTERPRISE_CHECKLIST.md.
    def _fc_base_fee_rules(self):
        """The plan's recurring price rules for its base fee product in the plan's currency (best first:
        the service's pricelist). Rules in another currency (the plan's former one) price the orders
        already sold in it and are never read or rewritten as this plan's fee."""
        self.ensure_one()
        if not self.x_fc_product_id or not self.id:
            return self.env["product.pricelist.item"]
        currency = self._fc_currency()
        rules = self.env["product.pricelist.item"].sudo().search([
            ("plan_id", "=", self.id), ("product_tmpl_id", "=", self.x_fc_product_id.product_tmpl_id.id),
            ("compute_price", "=", "fixed"), ("pricelist_id.currency_id", "=", currency.id)], order="id")
        pricelist = self.x_fc_service_id._fc_pricelist(currency, create=False) if self.x_fc_service_id else None
        return rules.sorted(lambda rule: rule.pricelist_id != pricelist)

    @api.depends("x_fc_product_id", "x_fc_currency_id", "x_fc_service_id")
    def _compute_x_fc_amount(self):
        for plan in self:
            plan.x_fc_amount = plan._fc_base_fee_rules()[:1].fixed_price

    def _inverse_x_fc_amount(self):
        for plan in self:
            rule = plan._fc_base_fee_rules()[:1]
            if rule:
                rule.fixed_price = plan.x_fc_amount
                continue
            if not plan.x_fc_amount:
                continue
            if not plan.x_fc_product_id or not plan.x_fc_service_id:
                raise ValidationError(self.env._(
                    "Plan %s: set its billing service and base fee product before its base fee.", plan.name))
            self.env["product.pricelist.item"].sudo().create({
                "pricelist_id": plan.x_fc_service_id._fc_pricelist(plan._fc_currency()).id,
                "applied_on": "1_product",
                "product_tmpl_id": plan.x_fc_product_id.product_tmpl_id.id,
                "plan_id": plan.id,
                "compute_price": "fixed",
                "fixed_price": plan.x_fc_amount,
            })

    def write(self, vals):
        moved = {"x_fc_product_id", "x_fc_currency_id", "x_fc_service_id"} & set(vals) and "x_fc_amount" not in vals
        amounts = {plan: plan.x_fc_amount for plan in self} if moved else {}
        res = super().write(vals)
        for plan, amount in amounts.items():  # the price follows a new product, currency or service
            if amount and not plan._fc_base_fee_rules():
                plan.x_fc_amount = amount
        return res

    def _fc_base_fee(self):
        """The base fee of this plan per billing period (a Decimal in the plan's currency): its
        native recurring price. The single plan-level answer to "what does this plan cost"."""
        self.ensure_one()
        return money.to_decimal(self.x_fc_amount or 0)

    def _fc_annual_base_fee(self):
        """The base fee over a year, to compare plans of different periods (Lago: an upgrade is a
        plan whose annualised price is at least the current one's)."""
        self.ensure_one()
        per_year = {"week": 52, "month": 12, "year": 1}[self.billing_period_unit] / (self.billing_period_value or 1)
        return self._fc_base_fee() * money.to_decimal(per_year)

    # ------------------------------------------------------------------ helpers
    def _fc_currency(self):
        self.ensure_one()
        return self.x_fc_currency_id or self.x_fc_service_id.currency_id or self.env.company.currency_id

    def _fc_amount_cents(self):
        self.ensure_one()
        return money.to_minor_units(self._fc_base_fee(), self._fc_currency().decimal_places)

    def _fc_base_fee_line_values(self):
        """The base-fee order line of a subscription on this plan. Its price is the plan's recurring
        price rule (given here too, as the rule computes it, so that creating thousands of orders
        does not look the rule up per line; Odoo recomputes it from the rule on any change)."""
        self.ensure_one()
        fee = float(self._fc_base_fee())
        return {"product_id": self.x_fc_product_id.id, "product_uom_qty": 1,
                "price_unit": fee, "technical_price_unit": fee}

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
