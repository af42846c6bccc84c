from odoo import models


class SaleOrderDiscount(models.TransientModel):
    """Odoo's *Discount* button: *On All Order Lines* discounts the lines the salesperson prices,
    never the billing lines (their discount is code-only: the billing cycle prices them)."""

    _inherit = "sale.order.discount"

    def action_apply_discount(self, *args, **kwargs):
        self.ensure_one()
        billing_lines = self.sale_order_id.order_line.filtered("x_fc_line_kind")
        if self.discount_type != "sol_discount" or not billing_lines:
            return super().action_apply_discount(*args, **kwargs)
        # Odoo's own step (sale.order.discount.action_apply_discount), on the other lines only.
        self.with_company(self.company_id).sale_order_id.order_line.filtered(
            lambda line: not line.x_fc_line_kind).write({"discount": self.discount_percentage * 100})
        return True
