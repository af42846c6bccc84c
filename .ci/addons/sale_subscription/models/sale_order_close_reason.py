# TEST-ONLY STAND-IN (see ../../README.md).
from odoo import fields, models


class SaleOrderCloseReason(models.Model):
    """DOC closing.rst: the Close Reason chosen when closing (Subscriptions > Configuration > Close Reasons)."""

    _name = "sale.order.close.reason"
    _description = "Subscription Close Reason"
    _order = "sequence, id"

    name = fields.Char(required=True, translate=True)
    sequence = fields.Integer(default=10)
