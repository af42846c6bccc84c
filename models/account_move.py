from odoo import fields, models


class AccountMove(models.Model):
    _inherit = "account.move"

    x_fc_service_id = fields.Many2one(
        "fusion.billing.service", string="Billing Service", index="btree_not_null", copy=False,
        help="The app this invoice bills (one invoice per service).")
