from odoo import fields, models


class ResPartner(models.Model):
    _inherit = "res.partner"

    x_fc_account_link_ids = fields.One2many(
        "fusion.billing.account.link", "partner_id", string="App Accounts",
        help="This client's accounts in NexaSystems apps (one partner across every app).")
