import json
from collections import defaultdict

from odoo import api, fields, models

from ..core import aggregation, periods

EVENT_STATES = [
    ("processed", "Processed"),
    ("unknown_subscription", "Unknown subscription"),
    ("unknown_metric", "Unknown metric code"),
    ("invalid_property", "Missing/invalid property"),
    ("late", "Late (period already closed)"),
]


class IngestConflict(Exception):
    """A transaction id was already used for that subscription with a different payload."""

    def __init__(self, index):
        super().__init__(index)
        self.index = index


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

    # Few indexes on purpose: every one costs each inserted event. Lookups by service and
    # external subscription use the dedupe index; rollups use the (subscription, metric, time) one.
    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="restrict")
    company_id = fields.Many2one(related="service_id.company_id", store=True)
    transaction_id = fields.Char(required=True)
    external_subscription_id = fields.Char(required=True)
    code = fields.Char(required=True)
    timestamp = fields.Datetime(required=True, index=True)
    properties = fields.Json()
    precise_total_amount_cents = fields.Char()
    fingerprint = fields.Char(required=True, help="Hash of the event content: tells a replay from a conflict.")
    subscription_id = fields.Many2one("sale.order", ondelete="set null")
    metric_id = fields.Many2one("fusion.billing.metric", ondelete="set null")
    state = fields.Selection(EVENT_STATES, required=True, default="processed", index=True)

    _dedupe_uniq = models.UniqueIndex(
        "(service_id, external_subscription_id, transaction_id)",
        "This event (transaction id) was already received for that subscription.")
    _subscription_metric_time_idx = models.Index("(subscription_id, metric_id, timestamp) WHERE subscription_id IS NOT NULL")

    # ------------------------------------------------------------------ ingestion
    @api.model
    def _ingest(self, service, events):
        """Store validated events of ``service`` exactly once and roll them up into usage.

        ``events`` are clean dicts (``core.lago.validate_event``) carrying a ``fingerprint``.
        Returns the stored event records in input order (a replay returns the stored row).
        Raises :class:`IngestConflict` (index) when a transaction id is reused with another
        payload; the caller rolls the whole request back.
        Dedupe is enforced by the unique index (``ON CONFLICT``), so concurrent workers
        cannot both insert, and only newly inserted events feed the usage rollups.
        """
        if not events:
            return self.browse()
        subscriptions = self._resolve_subscriptions(service, {e["external_subscription_id"] for e in events})
        metrics = {m.code: m for m in self.env["fusion.billing.metric"].sudo().search(
            [("service_id", "=", service.id), ("code", "in", list({e["code"] for e in events}))])}
        rows = [self._classify(service, event, subscriptions, metrics) for event in events]
        # A stable order keeps concurrent batches from deadlocking on the unique index.
        order = sorted(range(len(rows)), key=lambda i: (rows[i]["external_subscription_id"], rows[i]["transaction_id"]))
        inserted = self._insert_new([rows[i] for i in order])
        ids = self._existing_ids(service, events)
        stored = self.browse([ids[i] for i in range(len(events))]).sudo()
        for index, record in enumerate(stored):
            if record.fingerprint != events[index]["fingerprint"]:
                raise IngestConflict(index)
        fresh = stored.filtered(lambda e: e.id in inserted and e.state == "processed")
        fresh._roll_up()
        return stored

    @api.model
    def _resolve_subscriptions(self, service, external_ids):
        orders = self.env["sale.order"].sudo().search([
            ("x_fc_service_id", "=", service.id), ("x_fc_external_id", "in", list(external_ids)),
            ("is_subscription", "=", True),
        ], order="x_fc_terminated_at desc nulls first, id desc")
        found = defaultdict(list)
        for order in orders:
            found[order.x_fc_external_id].append(order)
        return found

    @api.model
    def _subscription_at(self, candidates, timestamp):
        """The subscription (live or terminated) of an external id that covers ``timestamp``."""
        for order in candidates:
            started = order.start_date or order.date_order.date()
            ended = order.x_fc_terminated_at
            if timestamp.date() >= started and (not ended or timestamp < ended):
                return order
        return candidates[0] if candidates and not candidates[0].x_fc_terminated_at else None

    @api.model
    def _classify(self, service, event, subscriptions, metrics):
        timestamp = event["timestamp"].replace(tzinfo=None)
        subscription = self._subscription_at(subscriptions.get(event["external_subscription_id"], []), timestamp)
        metric = metrics.get(event["code"])
        state = "processed"
        if not subscription:
            state = "unknown_subscription"
        elif not metric:
            state = "unknown_metric"
        elif aggregation.property_value(metric.aggregation, event["properties"], metric.field_name) is None:
            state = "invalid_property"
        precise = event.get("precise_total_amount_cents")
        return {
            "service_id": service.id,
            "company_id": service.company_id.id,
            "transaction_id": event["transaction_id"],
            "external_subscription_id": event["external_subscription_id"],
            "code": event["code"],
            "timestamp": timestamp,
            "properties": json.dumps(event.get("properties") or {}),
            "precise_total_amount_cents": None if precise is None else str(precise),
            "fingerprint": event["fingerprint"],
            "subscription_id": subscription.id if subscription else None,
            "metric_id": metric.id if metric else None,
            "state": state,
        }

    @api.model
    def _insert_new(self, rows):
        columns = list(rows[0])
        now = fields.Datetime.now()
        uid = self.env.uid
        values = [tuple(row[c] for c in columns) + (uid, now, uid, now) for row in rows]
        placeholders = ", ".join(["%s"] * len(values))
        self.env.flush_all()
        self.env.cr.execute(f"""
            INSERT INTO fusion_billing_event ({", ".join(columns)}, create_uid, create_date, write_uid, write_date)
            VALUES {placeholders}
            ON CONFLICT (service_id, external_subscription_id, transaction_id) DO NOTHING
            RETURNING id""", values)
        return {row[0] for row in self.env.cr.fetchall()}

    @api.model
    def _existing_ids(self, service, events):
        keys = [(e["external_subscription_id"], e["transaction_id"]) for e in events]
        self.env.cr.execute("""
            SELECT external_subscription_id, transaction_id, id FROM fusion_billing_event
             WHERE service_id = %s AND (external_subscription_id, transaction_id) IN %s""",
            (service.id, tuple(keys)))
        by_key = {(ext, tx): event_id for ext, tx, event_id in self.env.cr.fetchall()}
        return [by_key[key] for key in keys]

    def _roll_up(self):
        """Add these freshly stored events to their period's usage row (``INSERT … ON CONFLICT``)."""
        groups = defaultdict(list)
        for event in self:
            subscription = event.subscription_id
            plan = subscription.plan_id
            start, end = periods.period_bounds(
                subscription.start_date or subscription.date_order.date(),
                plan.billing_period_unit, plan.billing_period_value, event.timestamp)
            groups[(subscription.id, event.metric_id.id, start, end)].append(event)
        for key in sorted(groups):
            self.env["fusion.billing.usage"]._add_events(*key, groups[key])

    def _api_values(self):
        self.ensure_one()
        return {
            "lago_id": str(self.id),
            "transaction_id": self.transaction_id,
            "lago_customer_id": str(self.subscription_id.x_fc_account_link_id.id) if self.subscription_id else None,
            "code": self.code,
            "timestamp": self.timestamp,
            "precise_total_amount_cents": self.precise_total_amount_cents,
            "properties": self.properties or {},
            "lago_subscription_id": str(self.subscription_id.id) if self.subscription_id else None,
            "external_subscription_id": self.external_subscription_id,
            "created_at": self.create_date,
            # Our extension: whether the event bills anything (Lago would silently read 0).
            "status": self.state,
        }
