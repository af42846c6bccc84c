# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import Command, fields, models


class SaleOrderLine(models.Model):
    _inherit = "sale.order.line"

    # Renewal/upsell line → the line of the subscription it comes from (public third-party
    # modules read it; notes §B1).
    parent_line_id = fields.Many2one("sale.order.line", copy=False, index="btree_not_null")

    def _stand_in_is_recurring(self):
        self.ensure_one()
        return bool(self.product_id.recurring_invoice and self.order_id.is_subscription and not self.display_type)

    def _get_pricelist_kwargs(self):
        # DOC pricing.rst "Recurring Prices tab": a subscription's recurring products are priced
        # by the rule of its Recurring Plan.
        kwargs = super()._get_pricelist_kwargs()
        if self.order_id.plan_id and self.product_id.recurring_invoice:
            kwargs["plan_id"] = self.order_id.plan_id
        return kwargs

    def _get_renew_upsell_values(self, subscription_management, period_end=None):
        """Lines of a renewal (same quantities, priced again by the plan) or an upsell quotation
        (quantity 0 to fill in, prorated). DOC renewals.rst, upselling.rst."""
        values = []
        for line in self.filtered(lambda l: l._stand_in_is_recurring()):
            line_values = {"product_id": line.product_id.id, "name": line.name, "parent_line_id": line.id,
                           "product_uom_qty": line.product_uom_qty if subscription_management == "renew" else 0}
            if subscription_management == "upsell":
                # DOC upselling.rst: "recurring products are prorated based on the original
                # subscription's starting date" (service products only).
                ratio = line.order_id._stand_in_remaining_ratio() if line.product_id.type == "service" else 1
                line_values["price_unit"] = line.price_unit * ratio
                line_values["discount"] = line.discount
            values.append(Command.create(line_values))
        return values
