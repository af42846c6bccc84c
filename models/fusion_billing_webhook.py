import logging
import uuid
from collections import defaultdict
from datetime import timedelta

from odoo import api, fields, models
from odoo.exceptions import AccessError

from ..core import signing
from ..services.webhook_delivery import describe
from . import batch_jobs

_logger = logging.getLogger(__name__)

WEBHOOK_STATES = [
    ("pending", "Pending"),
    ("sending", "Sending"),
    ("retrying", "Retrying"),
    ("sent", "Sent"),
    ("failed", "Failed"),
    ("shadow", "Recorded, not sent"),
]
RETENTION_PARAM = "fusion_billing.webhook_retention_days"
# An ingest request commits well within this after inserting its events (the events.errors digest).
EVENTS_ERRORS_SETTLE = timedelta(minutes=1)
# Transaction ids in one events.errors webhook: the rest are counted (total_count, truncated) and
# listed under Unbillable Events, so that an app flooding an unknown metric gets one small webhook.
EVENTS_ERRORS_MAX_IDS = 500
# Hourly runs in a row that fail a service's digest before its window is skipped (and a person told).
EVENTS_ERRORS_ATTEMPTS = 3
# events.errors list ← event state (Lago's lists; unknown_subscription is our extension).
EVENTS_ERRORS_LISTS = {"invalid_code": "unknown_metric", "missing_aggregation_property": "invalid_property",
                       "missing_group_key": None, "invalid_filter_values": None,
                       "unknown_subscription": "unknown_subscription"}
# Daily runs that try an invoice's invoice.payment_overdue before leaving it to a person.
OVERDUE_ATTEMPTS = 3


class FusionBillingWebhook(models.Model):
    """One outbound lifecycle webhook to an app: queued with the business change, then delivered.

    Rows are created in the transaction of the change (a rollback sends nothing, a commit
    always sends). The body is frozen at enqueue time, so the signed bytes and the unique
    key are identical on every retry. Shadow services (or services without a URL) record
    what would be sent and send nothing.

    Only code writes a row (no user has write access, not even administrators): what is signed
    and sent, to which app, and when, cannot be forged over RPC. Users get *Resend*.
    """

    _name = "fusion.billing.webhook"
    _description = "Outbound Webhook"
    _inherit = ["mail.thread", "mail.activity.mixin"]
    _order = "id desc"
    _rec_name = "event_type"
    _check_company_auto = True
    _mail_post_access = "read"  # users comment and close activities on rows they cannot write

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
    _due_idx = models.Index("(next_attempt_at, id) WHERE state IN ('pending', 'retrying', 'sending')")

    # ------------------------------------------------------------------ enqueue
    @api.model
    def _enqueue(self, service, webhook_type, record=None, obj=None):
        """Queue ``webhook_type`` about ``record`` (or a ready ``obj``) for ``service``'s app.

        A side effect of a change the caller was allowed to make (an accountant posting an
        invoice, a salesperson's subscription, an API call): the row is built and written by
        code, as superuser, whoever the caller is."""
        return self._enqueue_many([(service, webhook_type, record, obj)])

    @api.model
    def _enqueue_many(self, items):
        """``_enqueue`` of many ``(service, webhook_type, record, obj)`` at once: one ``create`` for
        all their rows (e.g. the invoices of a batch the recurring run posts)."""
        values = []
        for service, webhook_type, record, obj in items:
            service = service.sudo()
            if not service or not service._fc_wants_webhook(webhook_type):
                continue
            if obj is None:
                obj = record.sudo()._fc_webhook_object()
            payload = signing.body_bytes(signing.envelope(webhook_type, service.organization_id, obj))
            sendable = service.billing_mode == "live" and service.webhook_url
            values.append({
                "service_id": service.id,
                "event_type": webhook_type,
                "object_type": signing.OBJECT_TYPES[webhook_type],
                "object_ref": f"{record._name},{record.id}" if record else False,
                "payload": payload.decode("utf-8"),
                "state": "pending" if sendable else "shadow",
            })
        if not values:
            return self.browse()
        return self.sudo().with_context(mail_create_nolog=True).create(values)  # queue rows: their state is tracked

    # ------------------------------------------------------------------ delivery
    @api.model
    def _cron_deliver(self):
        """Send due webhooks (``services/webhook_delivery.py``): claimed with ``SKIP LOCKED`` and
        committed as started, sent outside any lock, each outcome committed on its own, services
        served fairly. Returns the rows attempted."""
        from ..services.webhook_delivery import WebhookDelivery  # noqa: PLC0415 (services import models)
        return WebhookDelivery(self.env).run()

    def _fc_record_attempt(self, status, error):
        """The outcome of the attempt counted when the row was claimed (written by code only).
        A delivery is one UPDATE of the row and nothing else (no tracking, no message): its
        commit cannot fail on a side effect, which would leave it *sending*, sent again later."""
        self.ensure_one()
        now = fields.Datetime.now()
        if not error:
            self.flush_recordset()
            self.env.cr.execute("""
                UPDATE fusion_billing_webhook SET state = 'sent', sent_at = %s, last_attempt_at = %s,
                       last_status_code = %s, last_error = NULL, write_date = %s, write_uid = %s
                 WHERE id = %s""", [now, now, status, now, self.env.uid, self.id])
            self.invalidate_recordset(["state", "sent_at", "last_attempt_at", "last_status_code", "last_error",
                                       "write_date", "write_uid"])
            return
        values = {"last_attempt_at": now, "last_status_code": status}
        if self.attempts >= signing.MAX_ATTEMPTS:
            values.update(state="failed", last_error=error)
        else:
            values.update(state="retrying", last_error=error, next_attempt_at=now + signing.next_delay(self.attempts))
        self.sudo().write(values)
        if self.state == "failed":
            self._fc_alert_billing_team()

    @api.model
    def _fc_billing_team_member(self):
        """Who gets the to-do of a failure a person must look at: a Fusion Billing manager."""
        return self.env.ref("fusion_centralize_billing.group_fusion_billing_manager").user_ids.filtered(
            lambda user: not user.share and user.active)[:1] or self.env.ref("base.user_admin")

    def _fc_alert_billing_team(self):
        self.sudo().activity_schedule(
            "mail.mail_activity_data_todo", user_id=self._fc_billing_team_member().id,
            summary=self.env._("Webhook to %s failed", self.service_id.name),
            note=self.env._("%(type)s could not be delivered after %(attempts)s attempts: %(error)s",
                            type=self.event_type, attempts=self.attempts, error=self.last_error))

    def action_resend(self):
        """Send again now (failed, retrying or shadow rows of a live service with a URL), with the
        same unique key. The user's way to act on a row: it checks the group and the rows'
        access, then the row is written by code."""
        if not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_user"):
            raise AccessError(self.env._("Only Fusion Billing users can resend webhooks."))
        self.check_access("read")
        resendable = self.sudo().filtered(lambda webhook: webhook.state in ("failed", "retrying", "shadow")
                                          and webhook.service_id.billing_mode == "live"
                                          and webhook.service_id.webhook_url)
        resendable.write({"state": "pending", "next_attempt_at": fields.Datetime.now()})
        resendable.activity_ids.action_done()
        for webhook in resendable:
            webhook.message_post(body=self.env._("Resent by %s.", self.env.user.name))
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
        """Hourly digest of events that bill nothing (unknown code/subscription, bad property).

        Each service's bound moves to the latest creation time the digest read, never to "now":
        an event's creation time is when its request inserted it, and a request may commit after
        the digest's snapshot; a bound of "now" put it behind the bound, never reported. Events of
        the last ``EVENTS_ERRORS_SETTLE`` are left to the next digest, so that the requests that
        inserted them have committed (and an older event cannot commit after a newer one read).

        Each service on its own, as the daily reconciliation: its digest is committed before the
        next one starts; one that fails is rolled back alone, noted on the service and tried again
        the next hour; after ``EVENTS_ERRORS_ATTEMPTS`` failures in a row its window is skipped
        (its events stay under *Unbillable Events*) and the billing team is notified."""
        until = fields.Datetime.now() - EVENTS_ERRORS_SETTLE
        for service in self.env["fusion.billing.service"].search([], order="id"):
            try:
                with self.env.cr.savepoint():
                    self._fc_events_errors_digest(service, until)
            except batch_jobs.CONFLICTS:  # someone changed the service meanwhile: not a failure, next hour
                self.env.invalidate_all()
                _logger.info("events.errors digest of %s: the service changed meanwhile, left to the next run",
                             service.name)
            except Exception as error:  # noqa: BLE001 — one app's digest never stops another's
                self.env.invalidate_all()
                self._fc_events_errors_failed(service, until, error)
            batch_jobs.commit(self.env)  # each service's digest (or failure) kept on its own

    @api.model
    def _fc_events_errors_digest(self, service, until):
        """One service's digest: counted in SQL, at most ``EVENTS_ERRORS_MAX_IDS`` ids read (the
        oldest), whatever the number of events."""
        since = service.events_errors_until or service.create_date
        states = tuple(state for state in EVENTS_ERRORS_LISTS.values() if state)
        self.env["fusion.billing.event"].flush_model()
        where = "service_id = %s AND state IN %s AND create_date > %s AND create_date <= %s"
        params = [service.id, states, since, until]
        self.env.cr.execute(f"SELECT count(*), max(create_date) FROM fusion_billing_event WHERE {where}", params)
        total, last = self.env.cr.fetchone()
        if not total:
            return
        self.env.cr.execute(f"SELECT state, transaction_id FROM fusion_billing_event WHERE {where} "  # noqa: S608
                            "ORDER BY create_date, id LIMIT %s", [*params, EVENTS_ERRORS_MAX_IDS])
        ids = defaultdict(list)
        for state, transaction_id in self.env.cr.fetchall():
            ids[state].append(transaction_id)
        service.sudo().write({"events_errors_until": last, "events_errors_failures": 0})
        obj = {name: ids[state] if state else [] for name, state in EVENTS_ERRORS_LISTS.items()}
        self._enqueue(service, "events.errors", obj=dict(obj, total_count=total,  # extensions: what was left out
                                                         truncated=total > EVENTS_ERRORS_MAX_IDS))

    @api.model
    def _fc_events_errors_failed(self, service, until, error):
        text = describe(error, limit=1000)
        _logger.warning("events.errors digest of %s failed: %s", service.name, text)
        service = service.sudo()
        if service.events_errors_failures + 1 < EVENTS_ERRORS_ATTEMPTS:
            service.events_errors_failures += 1
            service.message_post(body=self.env._(
                "The events.errors digest failed and was rolled back (the other apps' were sent); the next hourly "
                "run tries again: %s", text))
            return
        since = service.events_errors_until or service.create_date
        service.write({"events_errors_until": until, "events_errors_failures": 0})
        note = self.env._(
            "The events.errors digest of the events received from %(since)s to %(until)s (UTC) failed %(attempts)s "
            "times in a row and was skipped: the app was not told of them. They stay listed under Usage → Unbillable "
            "Events. Error: %(error)s", since=since, until=until, attempts=EVENTS_ERRORS_ATTEMPTS, error=text)
        # The service has no activities: the billing team is notified in its inbox (a mention).
        service.message_post(body=note, partner_ids=self._fc_billing_team_member().partner_id.ids)

    @api.model
    def _cron_payment_overdue(self):
        """``invoice.payment_overdue`` once per posted, unpaid invoice past its due date.

        Each invoice on its own: one whose notice cannot be built is rolled back alone, noted in
        its chatter and tried again by the next daily runs, ``OVERDUE_ATTEMPTS`` in all; then a
        to-do asks the billing team to fix it and press *Retry Overdue Notice* (its Action menu)."""
        moves = self.env["account.move"].search([
            ("x_fc_service_id", "!=", False), ("state", "=", "posted"), ("move_type", "=", "out_invoice"),
            ("payment_state", "in", ("not_paid", "partial")), ("x_fc_overdue_notified", "=", False),
            ("x_fc_overdue_attempts", "<", OVERDUE_ATTEMPTS), ("invoice_date_due", "<", fields.Date.context_today(self))])
        for move in moves:
            try:
                with self.env.cr.savepoint():
                    self._enqueue(move.x_fc_service_id, "invoice.payment_overdue", move)
                    move.sudo().x_fc_overdue_notified = True
            except batch_jobs.CONFLICTS:  # someone changed the invoice meanwhile: not its fault, tomorrow's run
                self.env.invalidate_all()
                _logger.info("invoice.payment_overdue of %s: the invoice changed meanwhile, left to the next run",
                             move.name)
            except Exception as error:  # noqa: BLE001 — one invoice never stops the others' notices
                self.env.invalidate_all()
                self._fc_overdue_failed(move, error)
                self.env.flush_all()  # its failure written here, not in the next invoice's savepoint

    @api.model
    def _fc_overdue_failed(self, move, error):
        text = describe(error, limit=1000)
        _logger.warning("invoice.payment_overdue of %s could not be queued: %s", move.name, text)
        move = move.sudo()
        move.x_fc_overdue_attempts += 1
        move.message_post(body=self.env._(
            "The app could not be told that this invoice is overdue (attempt %(attempt)s of %(max)s; the other "
            "invoices were notified): %(error)s", attempt=move.x_fc_overdue_attempts, max=OVERDUE_ATTEMPTS, error=text))
        if move.x_fc_overdue_attempts >= OVERDUE_ATTEMPTS:
            move.activity_schedule(
                "mail.mail_activity_data_todo", user_id=self._fc_billing_team_member().id,
                summary=self.env._("Overdue notice to %s not sent", move.x_fc_service_id.name),
                note=self.env._("invoice.payment_overdue failed %(attempts)s days in a row and is no longer retried: "
                                "%(error)s. Fix the cause, then Action → Retry Overdue Notice.",
                                attempts=move.x_fc_overdue_attempts, error=text))

