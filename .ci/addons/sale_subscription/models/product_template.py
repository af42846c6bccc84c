# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import fields, models


class ProductTemplate(models.Model):
    _inherit = "product.template"

    recurring_invoice = fields.Boolean("Subscription Product")
