from odoo import fields, models


class ResUsers(models.Model):
    _inherit = "res.users"

    x_fc_api_service_id = fields.Many2one(
        "fusion.billing.service", string="Billing API User Of", readonly=True, copy=False,
        index="btree_not_null", ondelete="cascade",
        help="Set on a billing service's technical API user only: record rules then confine this user "
             "to that service's records.")
