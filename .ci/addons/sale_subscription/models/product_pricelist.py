# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import fields, models


class ProductPricelistItem(models.Model):
    """Recurring prices are price rules with a Recurring Plan.

    DOC sales/products_prices/prices/pricing.rst, "Recurring Prices tab": "the same functionality
    of the Price Rules tab is present. The only difference being that a recurring time period can
    be applied in the Recurring Plan column", with a Recurring Price; subscriptions.rst: the product
    form's Recurring Prices tab ("Add a price rule") and the plan's Pricing tab (products, variants,
    pricelist, recurring price). Public odoo/odoo PR #255303 ("In the Recurring Prices tab, create a
    new entry ... with a Fixed Price of $20.00 and a monthly Recurring Plan") and Odoo's public
    tutorials prototype (odoo/tutorials, pricelist_refactor_subscription: ``product.pricelist.item``
    with ``plan_id``, ``compute_price='fixed'``, ``fixed_price``) give the technical names.
    """

    _inherit = "product.pricelist.item"

    plan_id = fields.Many2one("sale.subscription.plan", string="Recurring Plan", index="btree_not_null")


class ProductPricelist(models.Model):
    _inherit = "product.pricelist"

    def _get_applicable_rules_domain(self, products, date, plan_id=None, **kwargs):
        """A rule with a Recurring Plan prices a recurring product only on an order of that plan."""
        domain = super()._get_applicable_rules_domain(products=products, date=date, **kwargs)
        plan_ids = [plan_id.id if hasattr(plan_id, "id") else plan_id, False] if plan_id else [False]
        return domain + [("plan_id", "in", plan_ids)]

    def _get_applicable_rules(self, products, date, plan_id=None, **kwargs):
        # DOC subscriptions.rst "Pricing tab": price rules of the plan "take precedent over the
        # default pricing information".
        rules = super()._get_applicable_rules(products, date, plan_id=plan_id, **kwargs)
        return rules.sorted(lambda rule: not rule.plan_id)
