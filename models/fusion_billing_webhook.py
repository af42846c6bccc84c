import logging
import uuid
from datetime import timedelta

import requests

from odoo import api, fields, models

from ..core import signing
from . import batch_jobs

_logger = logging.getLogger(__name__)

WEBHOOK_STATES = [
    ("pending", "Pending"),
    ("retrying", "Retrying"),
    ("sent", "Sent"),
    ("failed", "Failed"),
    ("shadow", "Recorded, not sent"),
]
TIMEOUT_SECONDS = 20  # applies to the connection and to each read
RETENTION_PARAM = "fusion_billing.webhook_retention_days"


class FusionBillingWebhook(models.Model):
    """One outbound lifecycle webhook to an app: queued with the business change, then delivered.

    Rows are created in the transaction of the change (a rollback sends nothing, a commit
    always sends). The body is frozen at enqueue time, so the signed bytes and the unique
    key are identical on every retry. Shadow services (or services without a URL) record
    what would be sent and send nothing.
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
    object_ref = fields.Char(index=True, help="Model and id of the object: deliveries keep their order per object.")
    payload = fields.Text(required=True, help="The exact JSON body sent (and signed).")
    unique_key = fields.Char(required=True, readonly=True, default=lambda self: str(uuid.uuid4()),
                             help="X-Lago-Unique-Key: the same on every retry.")
    state = fields.Selection(WEBHOOK_STATES, required=True, default="pending", index=True, tracking=True)
    attempts = fields.Integer(readonly=True)
    next_attempt_at = fields.Datetime(index=True, default=fields.Datetime.now)
    last_attempt_at = fields.Datetime(readonly=True)
    last_status_code = fields.Integer(readonly=True)
    last_error = fields.Text(readonly=True)
    sent_at = fields.Datetime(readonly=True)

    _unique_key_uniq = models.UniqueIndex("(unique_key)", "Webhook unique keys must be unique.")
    _due_idx = models.Index("(next_attempt_at, id) WHERE state IN ('pending', 'retrying')")

    # ------------------------------------------------------------------ enqueue
    @api.model
    def _enqueue(self, service, webhook_type, record=None, obj=None):
        """Queue ``webhook_type`` about ``record`` (or a ready ``obj``) for ``service``'s app."""
        if not service or not service._fc_wants_webhook(webhook_type):
            return self.browse()
        if obj is None:
            obj = record._fc_webhook_object()
        payload = signing.body_bytes(signing.envelope(webhook_type, service.organization_id, obj))
        sendable = service.billing_mode == "live" and service.webhook_url
        return self.sudo().with_context(mail_create_nolog=True).create({  # a queue row: its state is tracked
            "service_id": service.id,
            "event_type": webhook_type,
            "object_type": signing.OBJECT_TYPES[webhook_type],
            "object_ref": f"{record._name},{record.id}" if record else False,
            "payload": payload.decode("utf-8"),
            "state": "pending" if sendable else "shadow",
        })

    # ------------------------------------------------------------------ delivery
    @api.model
    def _cron_deliver(self, batch_size=50):
        """Send due webhooks. Rows are claimed with ``FOR UPDATE SKIP LOCKED`` (never two
        deliveries of one row at once, across workers) and a row is held back while an
        older one about the same object is still in flight, so each object's events arrive in order."""
        while True:
            webhooks = self.browse(batch_jobs.claim(self.env, """
                SELECT w.id FROM fusion_billing_webhook w
                 WHERE w.state IN ('pending', 'retrying') AND w.next_attempt_at <= %s
                   AND NOT EXISTS (SELECT 1 FROM fusion_billing_webhook older
                                    WHERE older.object_ref = w.object_ref AND older.service_id = w.service_id
                                      AND older.id < w.id AND older.state IN ('pending', 'retrying'))
                 ORDER BY w.id
                 LIMIT %s FOR UPDATE OF w SKIP LOCKED""", (fields.Datetime.now(), batch_size)))
            if not webhooks:
                return
            for webhook in webhooks:
                webhook._deliver()
            if not batch_jobs.commit_batch(self.env, len(webhooks)):
                return

    def _deliver(self):
        self.ensure_one()
        service = self.service_id.sudo()
        body = self.payload.encode("utf-8")
        now = fields.Datetime.now()
        status, error = 0, False
        try:
            response = requests.post(service.webhook_url, data=body,
                                     headers=signing.headers(service.webhook_secret or "", body, self.unique_key),
                                     timeout=TIMEOUT_SECONDS, allow_redirects=False)
            status = response.status_code
            if not signing.is_success(status):
                error = f"HTTP {status}: {response.text[:500]}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"
        values = {"attempts": self.attempts + 1, "last_attempt_at": now, "last_status_code": status}
        if not error:
            values.update(state="sent", sent_at=now, last_error=False)
        elif values["attempts"] >= signing.MAX_ATTEMPTS:
            values.update(state="failed", last_error=error)
        else:
            values.update(state="retrying", last_error=error,
                          next_attempt_at=now + signing.next_delay(values["attempts"]))
        self.write(values)
        if self.state == "failed":
            self._fc_alert_billing_team()

    def _fc_alert_billing_team(self):
        manager = self.env.ref("fusion_centralize_billing.group_fusion_billing_manager").user_ids.filtered(
            lambda user: not user.share and user.active)[:1] or self.env.ref("base.user_admin")
        self.activity_schedule(
            "mail.mail_activity_data_todo", user_id=manager.id,
            summary=self.env._("Webhook to %s failed", self.service_id.name),
            note=self.env._("%(type)s could not be delivered after %(attempts)s attempts: %(error)s",
                            type=self.event_type, attempts=self.attempts, error=self.last_error))

    def action_resend(self):
        """Send again now (failed or shadow rows of a live service), keeping the same unique key."""
        for webhook in self:
            if webhook.service_id.billing_mode != "live" or not webhook.service_id.webhook_url:
                continue
            webhook.write({"state": "pending", "next_attempt_at": fields.Datetime.now()})
            webhook.activity_ids.action_done()
        return True

    @api.model
    def _cron_cleanup(self):
        """Delete delivered (and shadow) rows older than the retention period (default 30 days)."""
        days = int(self.env["ir.config_parameter"].sudo().get_param(RETENTION_PARAM, 30))
        old = self.search([("state", "in", ("sent", "shadow")),
                           ("create_date", "<", fields.Datetime.now() - timedelta(days=days))])
        old.unlink()
        return len(old)

    # ------------------------------------------------------------------ periodic notices
    @api.model
    def _cron_events_errors(self):
        """Hourly digest of events that bill nothing (unknown code/subscription, bad property)."""
        for service in self.env["fusion.billing.service"].search([]):
            since = service.events_errors_until or service.create_date
            events = self.env["fusion.billing.event"].search([
                ("service_id", "=", service.id), ("state", "not in", ("processed", "late")),
                ("create_date", ">", since)])
            service.events_errors_until = fields.Datetime.now()
            if not events:
                continue
            by_state = {state: events.filtered(lambda e, s=state: e.state == s).mapped("transaction_id")
                        for state in ("unknown_metric", "invalid_property", "unknown_subscription")}
            self._enqueue(service, "events.errors", obj={
                "invalid_code": by_state["unknown_metric"],
                "missing_aggregation_property": by_state["invalid_property"],
                "missing_group_key": [],
                "invalid_filter_values": [],
                "unknown_subscription": by_state["unknown_subscription"],  # extension
            })

    @api.model
    def _cron_payment_overdue(self):
        """``invoice.payment_overdue`` once per posted, unpaid invoice past its due date."""
        moves = self.env["account.move"].search([
            ("x_fc_service_id", "!=", False), ("state", "=", "posted"), ("move_type", "=", "out_invoice"),
            ("payment_state", "in", ("not_paid", "partial")), ("x_fc_overdue_notified", "=", False),
            ("invoice_date_due", "<", fields.Date.context_today(self))])
        for move in moves:
            self._enqueue(move.x_fc_service_id, "invoice.payment_overdue", move)
        moves.x_fc_overdue_notified = True

