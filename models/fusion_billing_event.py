import json
from collections import defaultdict, namedtuple

from odoo import api, fields, models

from ..core import aggregation, errors, money, periods
from . import batch_jobs

EVENT_STATES = [
    ("processed", "Processed"),
    ("unknown_subscription", "Unknown subscription"),
    ("unknown_metric", "Unknown metric code"),
    ("invalid_property", "Missing/invalid property"),
    ("late", "Late (period already closed)"),
]


# What ingestion needs of a subscription, a service and a metric, read once per request.
# ``start``: first day the subscription covers; ``anchor``: its billing grid (``sale.order._fc_anchor``),
# which usage periods follow (the native invoicing periods, e.g. an imported trial invoiced on the 1st).
_Target = namedtuple("_Target", "subscription_id start anchor terminated_at account_link_id plan_id "
                                "period_unit period_value")
_Owner = namedtuple("_Owner", "service_id company_id")
_Metric = namedtuple("_Metric", "id aggregation field_name")


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
    state = fields.Selection(EVENT_STATES, required=True, default="processed")

    _dedupe_uniq = models.UniqueIndex(
        "(service_id, external_subscription_id, transaction_id)",
        "This event (transaction id) was already received for that subscription.")
    _subscription_metric_time_idx = models.Index("(subscription_id, metric_id, timestamp) WHERE subscription_id IS NOT NULL")
    # Only the few events that bill nothing are indexed by state (the list users watch).
    _unbillable_idx = models.Index("(service_id, state) WHERE state != 'processed'")

    # ------------------------------------------------------------------ ingestion
    # The hot path of the events API: plain SQL rows, no ORM records per event.
    _RETURNED = ("id", "transaction_id", "external_subscription_id", "code", "timestamp", "properties",
                 "precise_total_amount_cents", "subscription_id", "state", "fingerprint", "create_date")

    @api.model
    def _ingest(self, service, events):
        """Store validated events of ``service`` exactly once and add them to usage.

        ``events`` are clean dicts (``core.lago.validate_event``) carrying a ``fingerprint``.
        Returns the stored events' API values in input order (a replay returns the stored row).
        Raises :class:`IngestConflict` (index) when a transaction id is reused with another
        payload, ``core.errors.Invalid`` (keyed by index) for a property out of range; nothing is
        stored then (all or nothing).

        Designed not to conflict under concurrent workers: the writes run READ COMMITTED
        (``batch_jobs.read_committed``: the events API starts its request's transaction so, other
        callers get a short transaction of its own), where an identical event a concurrent request
        just inserted is waited for and then seen (in Odoo's REPEATABLE READ it was a
        serialization failure, i.e. a replay of the request).
        Dedupe is the unique index (``ON CONFLICT DO NOTHING``) and only newly inserted events
        feed usage, as append-only deltas (``fusion.billing.usage._fc_append_events``): no
        request updates a row another request updates. The whole request may still be replayed
        by Odoo; the replay finds its events stored and answers the same.
        """
        if not events:
            return []
        self.env.flush_all()  # the rest is plain SQL
        targets = self._resolve_subscriptions(service, {e["external_subscription_id"] for e in events})
        metrics = {m.code: m for m in self.env["fusion.billing.metric"].search_fetch(
            [("service_id", "=", service.id), ("code", "in", list({e["code"] for e in events}))],
            ["code", "aggregation", "field_name", "service_id"])}
        owner = _Owner(service.id, service.company_id.id)
        kinds = {code: _Metric(metric.id, metric.aggregation, metric.field_name) for code, metric in metrics.items()}
        rows = []
        for index, event in enumerate(events):
            try:
                rows.append(self._classify(owner, event, targets, kinds))
            except money.OutOfRange:
                raise errors.Invalid({str(index): {"properties": ["value_is_out_of_range"]}}) from None
        # A stable order keeps concurrent batches from deadlocking on the unique index.
        rows.sort(key=lambda row: (row["external_subscription_id"], row["transaction_id"]))
        keys = [(e["external_subscription_id"], e["transaction_id"]) for e in events]
        with batch_jobs.read_committed(self.env) as env:
            model = self.with_env(env)
            inserted = model._insert_new(rows)
            stored = dict(inserted)
            stored.update(model._stored_rows(service, [key for key in keys if key not in inserted]))
            for index, key in enumerate(keys):
                if stored[key]["fingerprint"] != events[index]["fingerprint"]:
                    raise IngestConflict(index)  # rolled back: nothing of the batch is stored
            model._roll_up([row for row in inserted.values() if row["state"] == "processed"], targets,
                           {metric.id: metric.with_env(env) for metric in metrics.values()})
        links = {target.subscription_id: target.account_link_id for found in targets.values() for target in found}
        return [self._api_dict(stored[key], links.get(stored[key]["subscription_id"])) for key in keys]

    @api.model
    def _resolve_subscriptions(self, service, external_ids):
        """External subscription id → [_Target] (live first, then the most recently terminated).
        Cancelled orders (never served: a pending subscription terminated, a quotation a person
        cancelled) take no events."""
        self.env.cr.execute("""
            SELECT so.x_fc_external_id, so.id, COALESCE(so.start_date, so.date_order::date),
                   COALESCE(so.x_fc_period_anchor, so.start_date, so.date_order::date), so.x_fc_terminated_at,
                   so.x_fc_account_link_id, plan.id, plan.billing_period_unit, plan.billing_period_value
              FROM sale_order so JOIN sale_subscription_plan plan ON plan.id = so.plan_id
             WHERE so.x_fc_service_id = %s AND so.x_fc_external_id IN %s AND so.is_subscription AND so.state != 'cancel'
          ORDER BY so.x_fc_terminated_at DESC NULLS FIRST, so.id DESC""", (service.id, tuple(external_ids)))
        found = defaultdict(list)
        for external_id, *values in self.env.cr.fetchall():
            found[external_id].append(_Target(*values))
        return found

    @api.model
    def _subscription_at(self, candidates, timestamp):
        """The subscription (live or terminated) of an external id that covers ``timestamp``."""
        for target in candidates:
            if timestamp.date() >= target.start and (not target.terminated_at or timestamp < target.terminated_at):
                return target
        return candidates[0] if candidates and not candidates[0].terminated_at else None

    @api.model
    def _classify(self, owner, event, targets, metrics):
        """The row to store for one clean event: its subscription and metric (``metrics``: code →
        ``_Metric``) and whether it bills; raises ``money.OutOfRange`` for a numeric property
        beyond the bounds."""
        timestamp = event["timestamp"].replace(tzinfo=None)
        target = self._subscription_at(targets.get(event["external_subscription_id"], []), timestamp)
        metric = metrics.get(event["code"])
        state = "processed"
        if not target:
            state = "unknown_subscription"
        elif not metric:
            state = "unknown_metric"
        elif aggregation.property_value(metric.aggregation, event["properties"], metric.field_name) is None:
            state = "invalid_property"
        precise = event.get("precise_total_amount_cents")
        return {
            "service_id": owner.service_id,
            "company_id": owner.company_id,
            "transaction_id": event["transaction_id"],
            "external_subscription_id": event["external_subscription_id"],
            "code": event["code"],
            "timestamp": timestamp,
            "properties": event.get("properties") or {},
            "precise_total_amount_cents": None if precise is None else str(precise),
            "fingerprint": event["fingerprint"],
            "subscription_id": target.subscription_id if target else None,
            "metric_id": metric.id if metric else None,
            "state": state,
        }

    @api.model
    def _insert_new(self, rows):
        """Insert the rows not stored yet; {(external subscription id, transaction id): stored row}."""
        columns = list(rows[0])
        now = fields.Datetime.now()
        uid = self.env.uid
        values = [tuple(json.dumps(row[c]) if c == "properties" else row[c] for c in columns) + (uid, now, uid, now)
                  for row in rows]
        placeholders = ", ".join(["%s"] * len(values))
        self.env.cr.execute(f"""
            INSERT INTO fusion_billing_event ({", ".join(columns)}, create_uid, create_date, write_uid, write_date)
            VALUES {placeholders}
            ON CONFLICT (service_id, external_subscription_id, transaction_id) DO NOTHING
            RETURNING id, external_subscription_id, transaction_id""", values)
        # A new row holds what was sent: only its id comes back (not its properties, parsed again).
        sent = {(row["external_subscription_id"], row["transaction_id"]): row for row in rows}
        return {(external_id, transaction_id): dict(sent[external_id, transaction_id], id=event_id, create_date=now)
                for event_id, external_id, transaction_id in self.env.cr.fetchall()}

    @api.model
    def _stored_rows(self, service, keys):
        """The already stored rows of these (external subscription id, transaction id) keys (replays)."""
        if not keys:
            return {}
        self.env.cr.execute(f"""
            SELECT {", ".join(self._RETURNED)} FROM fusion_billing_event
             WHERE service_id = %s AND (external_subscription_id, transaction_id) IN %s""",
            (service.id, tuple(keys)))
        return {(row["external_subscription_id"], row["transaction_id"]): row for row in self.env.cr.dictfetchall()}

    @api.model
    def _roll_up(self, rows, targets, metrics_by_id):
        """Append freshly stored event rows to usage: one delta per subscription, metric and period,
        the whole batch in one statement (``fusion.billing.usage._fc_append_events``); events of a
        closed period become late."""
        by_subscription = {target.subscription_id: target for found in targets.values() for target in found}
        groups, bounds = defaultdict(list), {}
        for row in rows:
            day = (row["subscription_id"], row["timestamp"].date())
            if day not in bounds:
                target = by_subscription[row["subscription_id"]]
                bounds[day] = periods.period_bounds(target.anchor, target.period_unit, target.period_value, day[1])
            groups[(row["subscription_id"], row["metric_id"], *bounds[day])].append(row)
        states = self.env["fusion.billing.usage"]._fc_append_events([
            (subscription_id, metrics_by_id[metric_id], start, end, groups[(subscription_id, metric_id, start, end)])
            for subscription_id, metric_id, start, end in sorted(groups)])
        for (subscription_id, metric_id, start, _end), group in groups.items():
            for row in group:
                row["state"] = states[(subscription_id, metric_id, start)]
        if groups:
            self.invalidate_model(["state"])

    @api.model
    def _api_dict(self, row, account_link_id):
        """Lago ``event`` values of a stored event row."""
        return {
            "lago_id": str(row["id"]),
            "transaction_id": row["transaction_id"],
            "lago_customer_id": str(account_link_id) if account_link_id else None,
            "code": row["code"],
            "timestamp": row["timestamp"],
            "precise_total_amount_cents": row["precise_total_amount_cents"] or None,
            "properties": row["properties"] or {},
            "lago_subscription_id": str(row["subscription_id"]) if row["subscription_id"] else None,
            "external_subscription_id": row["external_subscription_id"],
            "created_at": row["create_date"],
            # Our extension: whether the event bills anything (Lago would silently read 0).
            "status": row["state"],
        }

    def _api_values(self):
        self.ensure_one()
        row = {name: self[name] for name in self._RETURNED if name not in ("id", "subscription_id")}
        row.update(id=self.id, subscription_id=self.subscription_id.id)
        return self._api_dict(row, self.subscription_id.x_fc_account_link_id.id)
