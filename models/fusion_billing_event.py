from odoo import fields, models

EVENT_STATES = [
    ("processed", "Processed"),
    ("unknown_subscription", "Unknown subscription"),
    ("unknown_metric", "Unknown metric code"),
    ("invalid_property", "Missing/invalid property"),
]


class FusionBillingEvent(models.Model):
    """A usage event received from an app (Lago events API), kept as sent.

    Deduplicated per (service, external subscription, transaction id) by a unique
    index; events that cannot be rated are kept and surfaced, never dropped.
    """

    _name = "fusion.billing.event"
    _description = "Usage Event"
    _order = "timestamp desc, id desc"
    _rec_name = "transaction_id"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="restrict", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    transaction_id = fields.Char(required=True)
    external_subscription_id = fields.Char(required=True, index=True)
    code = fields.Char(required=True, index=True)
    timestamp = fields.Datetime(required=True, index=True)
    properties = fields.Json()
    precise_total_amount_cents = fields.Char()
    fingerprint = fields.Char(required=True, help="Hash of the event content: tells a replay from a conflict.")
    subscription_id = fields.Many2one("sale.order", index="btree_not_null", ondelete="set null")
    metric_id = fields.Many2one("fusion.billing.metric", index="btree_not_null", ondelete="set null")
    state = fields.Selection(EVENT_STATES, required=True, default="processed", index=True)

    _dedupe_uniq = models.UniqueIndex(
        "(service_id, external_subscription_id, transaction_id)",
        "This event (transaction id) was already received for that subscription.")
