from odoo import api, models
from odoo.exceptions import ValidationError


class ProductTemplate(models.Model):
    _inherit = "product.template"

    @api.constrains("recurring_invoice")
    def _check_x_fc_usage_product_not_recurring(self):
        """A product billing usage (a charge's, or the generic metered usage and plan-change credit
        products) never becomes recurring: Odoo's recurring run would bill its lines every period."""
        recurring = self.filtered("recurring_invoice")
        if not recurring:
            return
        ours = self.env["product.product"]
        for xmlid in ("fusion_centralize_billing.product_metered_usage",
                      "fusion_centralize_billing.product_plan_change_credit"):
            ours |= self.env.ref(xmlid, raise_if_not_found=False) or self.env["product.product"]
        charges = self.env["fusion.billing.charge"].sudo().with_context(active_test=False).search(
            [("product_id.product_tmpl_id", "in", recurring.ids)])
        used = (ours.product_tmpl_id | charges.product_id.product_tmpl_id) & recurring
        if used:
            raise ValidationError(self.env._(
                "%(products)s bill usage (a usage charge's invoice product, or the generic usage products): they "
                "cannot be recurring products, or Odoo's recurring run would bill those lines every period.",
                products=", ".join(used.mapped("display_name"))))
