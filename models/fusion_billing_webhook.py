from odoo import fields, models

WEBHOOK_STATES = [
    ("pending", "Pending"),
    ("retrying", "Retrying"),
    ("sent", "Sent"),
    ("failed", "Failed"),
    ("shadow", "Recorded (shadow)"),
]


class FusionBillingWebhook(models.Model):
    """One outbound lifecycle webhook to an app: queued with the business change, then delivered.

    The body is frozen at enqueue time so the signed bytes and the unique key are
    identical on every retry.
    """

    _name = "fusion.billing.webhook"
    _description = "Outbound Webhook"
    _inherit = ["mail.thread", "mail.activity.mixin"]
    _order = "id desc"
    _rec_name = "event_type"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    event_type = fields.Char(required=True, index=True, help="Lago webhook type, e.g. invoice.created.")
    object_type = fields.Char(required=True)
    object_ref = fields.Char(index=True, help="Model and id of the object, to keep deliveries in order per object.")
    payload = fields.Text(required=True, help="The exact JSON body sent (and signed).")
    unique_key = fields.Char(required=True, readonly=True, help="X-Lago-Unique-Key: the same on every retry.")
    state = fields.Selection(WEBHOOK_STATES, required=True, default="pending", index=True, tracking=True)
    attempts = fields.Integer(readonly=True)
    next_attempt_at = fields.Datetime(index=True, default=fields.Datetime.now)
    last_attempt_at = fields.Datetime(readonly=True)
    last_status_code = fields.Integer(readonly=True)
    last_error = fields.Text(readonly=True)
    sent_at = fields.Datetime(readonly=True)

    _unique_key_uniq = models.UniqueIndex("(unique_key)", "Webhook unique keys must be unique.")
    _due_idx = models.Index("(next_attempt_at, id) WHERE state IN ('pending', 'retrying')")
