import json
import logging
from collections import defaultdict, namedtuple

from odoo import api, fields, models

from ..core import aggregation

_logger = logging.getLogger(__name__)

# A usage row (or a period without one) as readers and the fold see it.
_Row = namedtuple("_Row", "id metric_id quantity events_count last_event_at state source quota_notified")


class FusionBillingUsage(models.Model):
    """Usage of one metric by one subscription over one billing period (a rollup).

    One row per (subscription, metric, period start). The events API does not update it per
    request: it appends ``fusion.billing.usage.delta`` rows (append-only, so concurrent batches
    never collide on this row). The usage of a period is this row plus its deltas: readers add them
    (``_fc_live_totals``), the period close and the fold cron merge them in (``_fc_fold``).
    Deduplication is on the events (by transaction id), so re-sending never double counts.
    """

    _name = "fusion.billing.usage"
    _description = "Usage Rollup"
    _order = "period_start desc, subscription_id, metric_id"
    _rec_name = "metric_id"
    _check_company_auto = True

    subscription_id = fields.Many2one(
        "sale.order", required=True, ondelete="cascade", index=True,
        domain=[("is_subscription", "=", True)])
    metric_id = fields.Many2one("fusion.billing.metric", required=True, ondelete="restrict", index=True)
    service_id = fields.Many2one(related="subscription_id.x_fc_service_id", store=True, index=True)
    partner_id = fields.Many2one(related="subscription_id.partner_id", store=True, index=True)
    company_id = fields.Many2one(related="subscription_id.company_id", store=True, index=True)
    period_start = fields.Date(required=True, index=True)
    period_end = fields.Date(required=True, help="First day after the period (exclusive).")
    quantity = fields.Float(
        digits=(20, 6), help="Aggregated units of the period (per the metric's aggregation).")
    quantity_display = fields.Char(
        string="Usage", compute="_compute_quantity_display",
        help="The quantity with the metric's decimals and unit (the quantity itself is kept exactly).")
    events_count = fields.Integer(help="Events (or pushes) that contributed to this period.")
    last_event_at = fields.Datetime(help="Timestamp of the latest contributing event.")
    source = fields.Selection(
        [("events", "Events / pushes"), ("import", "Import baseline")],
        required=True, default="events",
        help="Import baseline: allocation copied from the app's own data (e.g. NexaCloud deployments).")
    state = fields.Selection(
        [("open", "Open"), ("closed", "Closed"), ("billed", "Billed")],
        required=True, default="open", index=True)
    amount = fields.Monetary(currency_field="currency_id", help="Rated amount of the period, before tax.")
    currency_id = fields.Many2one(related="subscription_id.currency_id")
    invoice_line_id = fields.Many2one("account.move.line", readonly=True, copy=False, ondelete="set null",
                                      index="btree_not_null", help="The posted invoice line that billed it.")
    sale_line_id = fields.Many2one(
        "sale.order.line", string="Order Line", readonly=True, copy=False, ondelete="set null",
        index="btree_not_null", help="The subscription line that carries it to the native recurring invoice.")
    move_line_ids = fields.One2many(
        "account.move.line", "x_fc_usage_id", string="Journal Items", readonly=True,
        help="Invoice lines billing this usage and the credit-note lines reversing them.")
    credited_amount = fields.Monetary(
        string="Credited or Voided", currency_field="currency_id", readonly=True,
        compute="_compute_credited_amount", store=True,
        help="Part of the billed amount no longer invoiced: credited by a credit note, or on an invoice "
             "cancelled or reset to draft. Billed usage is never billed again by itself.")
    quota_notified = fields.Boolean(
        readonly=True, copy=False, help="subscription.usage_threshold_reached was sent: the included quota is used up.")

    _subscription_metric_period_uniq = models.UniqueIndex(
        "(subscription_id, metric_id, period_start)",
        "Usage is already recorded for this subscription, metric and period.")
    _period_order = models.Constraint(
        "CHECK(period_end > period_start)", "A usage period must end after it starts.")

    @api.depends("quantity", "metric_id.unit", "metric_id.decimal_places", "metric_id.uom_id")
    def _compute_quantity_display(self):
        for usage in self:
            usage.quantity_display = usage.metric_id._fc_format_quantity(usage.quantity) if usage.metric_id else False

    @api.depends("state", "amount", "move_line_ids.parent_state", "move_line_ids.price_subtotal",
                 "move_line_ids.move_id.move_type")
    def _compute_credited_amount(self):
        for usage in self:
            if usage.state != "billed":
                usage.credited_amount = 0.0
                continue
            net = sum(line.price_subtotal * (-1 if line.move_id.move_type == "out_refund" else 1)
                      for line in usage.move_line_ids if line.parent_state == "posted")
            usage.credited_amount = max(usage.currency_id.round(usage.amount - net), 0.0)

    @api.depends("metric_id", "period_start")
    def _compute_display_name(self):
        for usage in self:
            usage.display_name = f"{usage.metric_id.code or ''} {usage.period_start or ''}"

    # ------------------------------------------------------------------ event rollups
    @api.model
    def _fc_append_events(self, groups):
        """Ingest (in its own READ COMMITTED transaction): add freshly stored events as delta rows,
        one per subscription, metric and period, all in one statement, without touching the usage
        rows; then signal once per period that reaches its included quantity.

        ``groups``: [(subscription id, metric, period start, period end, events)], ``events`` rows
        with id, timestamp, properties. A period whose row is no longer open (closed or billed), or
        that the subscription's close has gone past (a metric no charge prices has no row), takes no delta: its events are marked late at once. If the period closes while this
        transaction runs, the delta lands after the close's fold and the next fold marks its
        events late (see ``_fc_fold``). Returns {(subscription id, metric id, period start):
        ``processed`` or ``late``}.
        """
        if not groups:
            return {}
        rows, events_of = [], {}
        for subscription_id, metric, start, end, events in groups:
            quantity, last_event_at = self._contribution(metric, events)
            events_of[(subscription_id, metric.id, start)] = (metric, end, [event["id"] for event in events])
            rows.append((subscription_id, metric.service_id.id, metric.id, start, end, quantity, len(events),
                         last_event_at, json.dumps([event["id"] for event in events])))
        self.flush_model()
        self.env["sale.order"].flush_model(["x_fc_usage_closed_until"])
        cr = self.env.cr
        cr.execute(f"""
            WITH appended AS (
                INSERT INTO fusion_billing_usage_delta (subscription_id, service_id, metric_id, period_start, period_end,
                                                        quantity, events_count, last_event_at, event_ids)
                SELECT v.* FROM (VALUES {", ".join(["(%s::int, %s::int, %s::int, %s::date, %s::date, %s::numeric, "
                                                     "%s::int, %s::timestamp, %s::jsonb)"] * len(rows))})
                       AS v(subscription_id, service_id, metric_id, period_start, period_end, quantity, events_count,
                            last_event_at, event_ids)
                 WHERE NOT EXISTS (SELECT 1 FROM fusion_billing_usage u
                                    WHERE u.subscription_id = v.subscription_id AND u.metric_id = v.metric_id
                                      AND u.period_start = v.period_start AND u.state != 'open')
                   -- a period the close has gone past is closed even without a row (as in _fc_fold)
                   AND NOT EXISTS (SELECT 1 FROM sale_order so WHERE so.id = v.subscription_id
                                      AND so.x_fc_usage_closed_until >= v.period_end)
                RETURNING subscription_id, metric_id, period_start)
            SELECT a.subscription_id, a.metric_id, a.period_start, COALESCE(u.quota_notified, false)
              FROM appended a LEFT JOIN fusion_billing_usage u
                ON u.subscription_id = a.subscription_id AND u.metric_id = a.metric_id
               AND u.period_start = a.period_start""", [value for row in rows for value in row])
        appended = {(subscription_id, metric_id, start): notified for subscription_id, metric_id, start, notified in cr.fetchall()}
        late = [event_id for key, (_metric, _end, event_ids) in events_of.items() if key not in appended
                for event_id in event_ids]
        if late:  # their period is closed (or billed)
            cr.execute("UPDATE fusion_billing_event SET state = 'late' WHERE id IN %s", (tuple(late),))
        included = self._fc_included_quantities({key[0] for key in appended}, {key[1] for key in appended})
        checked = sorted(key for key, notified in appended.items() if not notified and included.get(key[:2]))
        if checked:
            wanted = defaultdict(set)
            for subscription_id, metric_id, start in checked:
                wanted[subscription_id, start].add(metric_id)
            live = self._fc_live_totals_many(list(wanted), metric_ids=wanted)
            self._fc_signal_quotas(
                {key: live.get((key[0], key[2]), {}).get(key[1], (0, 0))[0] for key in checked},
                {key: events_of[key][1] for key in checked}, included)
        return {key: "processed" if key in appended else "late" for key in events_of}

    @api.model
    def _fc_included_quantities(self, subscription_ids, metric_ids):
        """{(subscription id, metric id): included quantity} of the active charges of the
        subscriptions' plans that include some (the quota signal)."""
        if not subscription_ids or not metric_ids:
            return {}
        self.env.cr.execute("""
            SELECT so.id, charge.metric_id, charge.included_quantity
              FROM sale_order so JOIN fusion_billing_charge charge ON charge.plan_id = so.plan_id
             WHERE so.id IN %s AND charge.metric_id IN %s AND charge.active AND charge.included_quantity > 0""",
            (tuple(subscription_ids), tuple(metric_ids)))
        return {(order_id, metric_id): included for order_id, metric_id, included in self.env.cr.fetchall()}

    @api.model
    def _fc_live_totals(self, subscription, period_start, others=None):
        """{metric id: (units, events_count)} of a subscription's period as its events stand: the
        usage rows plus the deltas not folded yet. What current usage shows and the close rates
        (the close folds first, so there it is the row itself). For a period not closed yet, that
        includes the usage filed under other periods that its close takes (``_fc_sweep``;
        ``others``: their starts, when the caller has them from ``_fc_merged_periods``)."""
        totals = self._fc_live_totals_of(subscription.id, period_start)
        if others is None:
            others = self._fc_merged_periods(subscription, period_start)
        if not others:
            return totals
        kinds, merged = {}, {metric_id: (units, count, None) for metric_id, (units, count) in totals.items()}
        for other, found in sorted(self._fc_live_totals_many([(subscription.id, day) for day in others]).items()):
            for metric_id, (units, count) in found.items():
                kind = kinds.get(metric_id) or kinds.setdefault(metric_id, self.env["fusion.billing.metric"].browse(
                    metric_id).aggregation)
                # (latest: the later period's value wins, as the close merges them by period)
                merged[metric_id] = self._fc_merge(kind, merged.get(metric_id), (units, count, None)) \
                    if kind != "latest" or metric_id not in totals else merged[metric_id]
        for metric_id, kind in kinds.items():
            if kind == "unique_count":
                merged[metric_id] = (self._fc_count_unique(subscription.id, metric_id, min(others[0], period_start), end),
                                     merged[metric_id][1], None)
        return {metric_id: (total[0], total[1]) for metric_id, total in merged.items()}

    @api.model
    def _fc_merged_periods(self, subscription, period_start):
        """Sorted starts of the other periods whose open usage the close of ``subscription``'s
        period ``period_start`` takes with it (``_fc_sweep``: usage filed before the billing grid
        moved); none for a closed period (it stays as it was closed)."""
        first_start = subscription._fc_period(subscription.x_fc_usage_closed_until or subscription._fc_start())[0]
        if period_start < first_start:
            return []
        end = subscription._fc_period(period_start)[1]
        # The first period to close takes every open period starting before its end; a later one,
        # those starting after its own start (the ones before went with the periods before it).
        first = period_start == first_start
        after = "period_start != %(start)s" if first else "period_start > %(start)s"
        self.env.cr.execute(f"""
            SELECT period_start FROM fusion_billing_usage
             WHERE subscription_id = %(subscription)s AND state = 'open' AND {after} AND period_start < %(end)s
             UNION
            SELECT period_start FROM fusion_billing_usage_delta
             WHERE subscription_id = %(subscription)s AND {after} AND period_start < %(end)s""",
                            {"subscription": subscription.id, "start": period_start, "end": end})
        return sorted(row[0] for row in self.env.cr.fetchall())

    @api.model
    def _fc_live_totals_of(self, subscription_id, period_start):
        return self._fc_live_totals_many([(subscription_id, period_start)]).get((subscription_id, period_start), {})

    @api.model
    def _fc_live_totals_many(self, keys, metric_ids=None):
        """``_fc_live_totals`` of many (subscription id, period start) ``keys`` in one query:
        {key: {metric id: (units, events_count)}}. ``metric_ids`` {key: metric ids} reads only
        those metrics of a key (the quota check reads the metrics it checks): a unique-count metric
        with deltas is counted again over its events only when it is read."""
        keys = list(dict.fromkeys(keys))
        if not keys:
            return {}
        self.flush_model()
        metric_ids = metric_ids or {}
        triples = [(subscription_id, metric_id, start) for subscription_id, start in keys
                   for metric_id in (sorted(metric_ids.get((subscription_id, start)) or [None]))]
        rows_of = ", ".join(["(%s::int, %s::int, %s::date)"] * len(triples))
        self.env.cr.execute(f"""
            WITH k(subscription_id, metric_id, period_start) AS (VALUES {rows_of})
            SELECT 0, u.subscription_id, u.period_start, u.id, u.metric_id, u.quantity, u.events_count,
                   u.last_event_at, u.state, u.source, m.aggregation, u.period_end
              FROM k JOIN fusion_billing_usage u
                ON u.subscription_id = k.subscription_id AND u.period_start = k.period_start
               AND u.metric_id = COALESCE(k.metric_id, u.metric_id)
              JOIN fusion_billing_metric m ON m.id = u.metric_id
             UNION ALL
            SELECT 1, d.subscription_id, d.period_start, d.id, d.metric_id, d.quantity, d.events_count,
                   d.last_event_at, NULL, NULL, m.aggregation, d.period_end
              FROM k JOIN fusion_billing_usage_delta d
                ON d.subscription_id = k.subscription_id AND d.period_start = k.period_start
               AND d.metric_id = COALESCE(k.metric_id, d.metric_id)
              JOIN fusion_billing_metric m ON m.id = d.metric_id
          ORDER BY 1, 4""", [value for triple in triples for value in triple])
        totals, states, unique = {}, {}, {}
        for is_delta, subscription_id, start, row_id, metric_id, quantity, count, last, state, source, kind, period_end \
                in self.env.cr.fetchall():
            key = (subscription_id, start, metric_id)
            if not is_delta:
                states[key] = state
                totals[key] = self._fc_start(_Row(row_id, metric_id, quantity, count, last, state, source, False))
            elif states.get(key, "open") != "open":
                continue  # late events: the next fold marks them
            else:
                totals[key] = self._fc_merge(kind, totals.get(key), (quantity, count, last))
                if kind == "unique_count":  # a row alone is exact (the fold counted it)
                    unique[key] = period_end
        for (subscription_id, start, metric_id), period_end in unique.items():
            counted = self._fc_count_unique(subscription_id, metric_id, start, period_end)
            key = (subscription_id, start, metric_id)
            totals[key] = (counted,) + tuple((totals.get(key) or (0, 0, None))[1:])
        result = {}
        for (subscription_id, start, metric_id), total in totals.items():
            if total:
                result.setdefault((subscription_id, start), {})[metric_id] = (total[0], total[1])
        return result

    @staticmethod
    def _fc_start(row):
        """A row's totals to merge deltas into; None for a row that holds no usage yet (the quota
        flag alone created it), so that a period starts from its first delta."""
        if row.events_count == 0 and row.source == "events" and not row.quantity:
            return None
        return (row.quantity or 0, row.events_count or 0, row.last_event_at)

    @staticmethod
    def _fc_merge(kind, current, delta):
        return delta if current is None else aggregation.merge(kind, current, delta)

    @api.model
    def _fc_fold(self, subscription_ids):
        """Make the usage rows of ``subscription_ids`` exact: merge their deltas in, then delete them.

        The period close calls it for the subscriptions it claimed (``FOR UPDATE SKIP LOCKED``)
        before rating them, and the fold cron for every subscription with deltas (claimed the same
        way), so two folds never run on one subscription at once and ingestion is never blocked.

        No event is ever silently lost, even when events arrive for a period being closed:
        * a delta committed before the close's snapshot is folded here and billed by that close;
        * a delta committed after it is invisible to the close (REPEATABLE READ) and stays; once
          the close has committed, its period's row is no longer open, so the next fold (this
          method, from the cron or the next close) marks its events ``late`` (listed, reported in
          ``events.errors``, not billed) and deletes it: exactly as events sent after the close;
        * an event whose period is already closed when it arrives is marked late at ingestion.
        Readers count a delta only while its row is open, so what current usage shows is what the
        close bills. A row another transaction changed since this one's snapshot makes the fold
        fail with a serialization failure: the caller's batch is rolled back and claimed again.
        The exact totals are checked against the included quantity too (the quota signal, once per
        period): batches ingested at the same moment each see only their own delta.
        """
        if not subscription_ids:
            return
        self.flush_model()
        cr = self.env.cr
        cr.execute("""
            SELECT d.id, d.subscription_id, d.metric_id, d.period_start, d.period_end, d.quantity, d.events_count,
                   d.last_event_at, d.event_ids, m.aggregation
              FROM fusion_billing_usage_delta d JOIN fusion_billing_metric m ON m.id = d.metric_id
             WHERE d.subscription_id IN %s ORDER BY d.id""", (tuple(subscription_ids),))
        deltas = cr.fetchall()
        if not deltas:
            return
        groups = defaultdict(list)
        for delta in deltas:
            groups[(delta[1], delta[2], delta[3])].append(delta)
        cr.execute("""
            SELECT subscription_id, metric_id, period_start, id, quantity, events_count, last_event_at, state, source,
                   quota_notified
              FROM fusion_billing_usage WHERE subscription_id IN %s""", (tuple({key[0] for key in groups}),))
        rows = {(sub, metric, start): values for sub, metric, start, *values in cr.fetchall()}
        # A period the close has gone past is closed even without a row (a metric no charge
        # prices has none): its deltas are late, never a new open row nobody closes.
        self.env["sale.order"].flush_model(["x_fc_usage_closed_until"])
        cr.execute("SELECT id, x_fc_usage_closed_until FROM sale_order WHERE id IN %s AND x_fc_usage_closed_until IS NOT NULL",
                   (tuple({key[0] for key in groups}),))
        closed_until = dict(cr.fetchall())
        late, updates, inserts, unique, units = [], [], [], [], {}
        for key, group in groups.items():
            row = rows.get(key)
            if (row and row[4] != "open") or (
                    not row and key[0] in closed_until and group[0][4] <= closed_until[key[0]]):
                late += [event_id for delta in group for event_id in (delta[8] or [])]
                continue
            kind = group[0][9]
            total = self._fc_start(_Row(row[0], key[1], *row[1:7])) if row else None
            for delta in group:
                total = self._fc_merge(kind, total, (delta[5], delta[6], delta[7]))
            if row:
                updates.append((row[0], total[0], total[1], total[2]))
            else:
                inserts.append((key[0], key[1], key[2], group[0][4]) + tuple(total))
            if kind == "unique_count":
                unique.append((key, group[0][4]))
            if not (row and row[6]):  # the quota was not signalled yet: check it on the exact total
                units[key] = total[0]
        if updates:
            cr.execute(f"""
                UPDATE fusion_billing_usage usage SET quantity = v.quantity, events_count = v.events_count,
                       last_event_at = v.last_event_at, write_uid = %s, write_date = %s
                  FROM (VALUES {", ".join(["(%s, %s::numeric, %s::int, %s::timestamp)"] * len(updates))})
                       AS v(id, quantity, events_count, last_event_at)
                 WHERE usage.id = v.id""", [self.env.uid, fields.Datetime.now()] + [v for row in updates for v in row])
        if inserts:
            self._fc_insert_rows(inserts)
        for key, period_end in unique:
            subscription_id, metric_id, period_start = key
            counted = self._fc_count_unique(subscription_id, metric_id, period_start, period_end)
            cr.execute("UPDATE fusion_billing_usage SET quantity = %s WHERE subscription_id = %s AND metric_id = %s "
                       "AND period_start = %s", (counted, subscription_id, metric_id, period_start))
            if key in units:
                units[key] = counted
        if late:
            cr.execute("UPDATE fusion_billing_event SET state = 'late' WHERE id IN %s AND state = 'processed'",
                       (tuple(late),))
        cr.execute("DELETE FROM fusion_billing_usage_delta WHERE id IN %s", (tuple(delta[0] for delta in deltas),))
        self.invalidate_model()
        self.env["fusion.billing.event"].invalidate_model(["state"])
        # The quota signal where the period's exact total is known: two batches that crossed the
        # included quantity only together each saw the other's delta uncommitted, and neither
        # signalled. Still once per period (``_fc_notify_quota``).
        included = self._fc_included_quantities({key[0] for key in units}, {key[1] for key in units})
        self._fc_signal_quotas(units, {key: groups[key][0][4] for key in units}, included)

    @api.model
    def _fc_signal_quotas(self, units, ends, included):
        """Signal the quotas used up: ``units`` {(subscription id, metric id, period start): the
        period's total}, ``ends`` {key: period end}, ``included`` {(subscription id, metric id):
        included quantity}. A period whose close takes usage filed under other periods (the billing
        grid moved, ``_fc_merged_periods``) is checked on the merged total the close bills, and not
        at all when that other usage has signalled already (once for what is billed together)."""
        units = {key: total for key, total in units.items() if included.get(key[:2])}
        if not units:
            return
        # Cheap first: only a period with other open usage before its end may take some (a later
        # period only usage starting after its own start, the first one to close any).
        pairs = sorted({(key[0], key[2], ends[key]) for key in units})
        self.env["sale.order"].flush_model(["x_fc_usage_closed_until"])
        self.env.cr.execute(f"""
            WITH k(subscription_id, period_start, period_end) AS (
                VALUES {", ".join(["(%s::int, %s::date, %s::date)"] * len(pairs))})
            SELECT k.subscription_id, k.period_start FROM k JOIN sale_order so ON so.id = k.subscription_id
             WHERE EXISTS (SELECT 1 FROM (SELECT period_start FROM fusion_billing_usage
                                           WHERE subscription_id = k.subscription_id AND state = 'open'
                                           UNION ALL
                                          SELECT period_start FROM fusion_billing_usage_delta
                                           WHERE subscription_id = k.subscription_id) o
                            WHERE o.period_start != k.period_start AND o.period_start < k.period_end
                              AND (o.period_start > k.period_start
                                   OR k.period_start <= COALESCE(so.x_fc_usage_closed_until, 'infinity'::date)))""",
                            [value for pair in pairs for value in pair])
        for subscription_id, period_start in self.env.cr.fetchall():
            subscription = self.env["sale.order"].browse(subscription_id)
            others = self._fc_merged_periods(subscription, period_start)
            if not others:
                continue
            totals = self._fc_live_totals(subscription, period_start, others=others)
            self.env.cr.execute("""
                SELECT DISTINCT metric_id FROM fusion_billing_usage
                 WHERE subscription_id = %s AND period_start IN %s AND state = 'open' AND quota_notified""",
                                (subscription_id, tuple(others)))
            signalled = {row[0] for row in self.env.cr.fetchall()}
            for key in [key for key in units if (key[0], key[2]) == (subscription_id, period_start)]:
                if key[1] in signalled:
                    del units[key]
                else:
                    units[key] = totals.get(key[1], (0, 0))[0]
        metrics = self.env["fusion.billing.metric"].browse({key[1] for key in units})
        for key in sorted(key for key, total in units.items() if total >= included[key[:2]]):
            subscription_id, metric_id, period_start = key
            self._fc_notify_quota(subscription_id, metrics.browse(metric_id), period_start, ends[key], units[key])

    @api.model
    def _cron_fold(self, batch_size=500):
        """Fold the deltas of every subscription that has some, a batch at a time: keeps the deltas
        readers add up few, and marks late the events of periods closed meanwhile. Subscriptions
        the period close holds are skipped (it folds them itself); each batch commits.

        A subscription whose fold fails is set aside as a failed close is (its reason on it, *Needs
        Attention*, one more billing attempt) and the rest of its batch is folded; after
        ``MAX_BILLING_ATTEMPTS`` it is no longer claimed, until someone presses *Retry Billing*."""
        from ..services.billing_cycle import MAX_BILLING_ATTEMPTS, BillingCycle  # noqa: PLC0415
        from . import batch_jobs  # noqa: PLC0415

        self.env.cr.execute("SELECT DISTINCT subscription_id FROM fusion_billing_usage_delta")
        pending = [row[0] for row in self.env.cr.fetchall()]
        cycle, conflicts = BillingCycle(self.env), 0
        for offset in range(0, len(pending), batch_size):
            chunk = tuple(pending[offset:offset + batch_size])
            while True:
                claimed = batch_jobs.claim(self.env, """
                    SELECT id FROM sale_order WHERE id IN %s AND COALESCE(x_fc_billing_attempts, 0) < %s
                     ORDER BY id FOR NO KEY UPDATE SKIP LOCKED""", (chunk, MAX_BILLING_ATTEMPTS))
                try:
                    cycle._isolated(cycle.orders.browse(claimed), lambda orders: self._fc_fold(orders.ids), clear=False)
                    if not batch_jobs.commit_batch(self.env, len(claimed)):
                        return
                    conflicts = 0
                    break
                except batch_jobs.CONFLICTS as error:
                    conflicts = batch_jobs.retry_after_conflict(self.env, error, conflicts)

    # ------------------------------------------------------------------ helpers of the rollups
    @api.model
    def _fc_count_unique(self, subscription_id, metric_id, period_start, period_end):
        """Distinct values of a unique-count metric's property over a period's processed events."""
        self.env.cr.execute("""
            SELECT COUNT(DISTINCT event.properties ->> metric.field_name)
              FROM fusion_billing_event event JOIN fusion_billing_metric metric ON metric.id = event.metric_id
             WHERE event.subscription_id = %s AND event.metric_id = %s AND event.state = 'processed'
               AND event.timestamp >= %s AND event.timestamp < %s""", (subscription_id, metric_id, period_start, period_end))
        return self.env.cr.fetchone()[0]

    @api.model
    def _fc_close_rows(self, periods_by_order, metric_ids_by_order, final_ids=()):
        """Close one period per subscription: ``periods_by_order`` {order id: (start, end)},
        ``metric_ids_by_order`` {order id: metric ids it is charged for}. Rows missing for a
        charged metric are created at 0 (``ON CONFLICT DO NOTHING``: a row a late event created
        meanwhile is kept), open usage left under another period is merged in (``_fc_sweep``;
        ``final_ids``: subscriptions closing their last period, which takes all of it), then every
        open row of those periods is flipped to *closed* in one ``UPDATE … RETURNING``. Returns
        {order id: {metric id: (usage id, quantity, events)}}.

        Ingestion appends deltas (``_fc_append_events``) and writes a row only to set the quota
        flag of an open one: what the close's fold saw is in the returned quantity; a delta
        committed after its snapshot is marked late by the next fold (``_fc_fold``)."""
        if not periods_by_order:
            return {}
        self.env.flush_all()
        now, uid = fields.Datetime.now(), self.env.uid
        missing = [(order_id, metric_id, start, end, 0, 0, None) for order_id, (start, end) in periods_by_order.items()
                   for metric_id in metric_ids_by_order.get(order_id, ())]
        if missing:
            self._fc_insert_rows(missing)
        kept_apart = self._fc_sweep(periods_by_order, set(final_ids))
        keys = list(periods_by_order.items())
        self.env.cr.execute(f"""
            UPDATE fusion_billing_usage usage SET state = 'closed', write_uid = %s, write_date = %s
              FROM (VALUES {", ".join(["(%s, %s::date)"] * len(keys))}) AS v(order_id, start)
             WHERE usage.state = 'open' AND usage.subscription_id = v.order_id
               AND (usage.period_start = v.start OR usage.id = ANY(%s))
         RETURNING usage.id, usage.subscription_id, usage.metric_id, usage.quantity, usage.events_count""",
            [uid, now] + [value for order_id, (start, _end) in keys for value in (order_id, start)] + [kept_apart])
        rows = {}
        for usage_id, order_id, metric_id, quantity, events in self.env.cr.fetchall():
            rows.setdefault(order_id, {})[metric_id] = (usage_id, quantity or 0.0, events or 0)
        self.invalidate_model()
        self.env["sale.order"].invalidate_model(["x_fc_usage_ids"])
        return rows

    @api.model
    def _fc_close_before(self, subscription_id, day):
        """Close every open row of a subscription whose period starts before ``day`` (the periods an
        activation skips); returns [(usage id, metric id, quantity, events)]."""
        self.env.flush_all()
        self.env.cr.execute("""
            UPDATE fusion_billing_usage SET state = 'closed', write_uid = %s, write_date = %s
             WHERE subscription_id = %s AND state = 'open' AND period_start < %s
         RETURNING id, metric_id, quantity, events_count""",
                            (self.env.uid, fields.Datetime.now(), subscription_id, day))
        rows = [(usage_id, metric_id, quantity or 0.0, events or 0) for usage_id, metric_id, quantity, events
                in self.env.cr.fetchall()]
        self.invalidate_model()
        return rows

    @api.model
    def _fc_sweep(self, periods_by_order, final_ids):
        """Usage is never stranded: open rows of a subscription filed under another period than
        the one being closed (``periods_by_order`` {order id: (start, end)}) that starts before its
        end, or under any period for ``final_ids``, are merged into that period's row (same
        aggregation as the fold; a unique count is recounted over the events of all of them) and
        deleted, so this close bills them, once.

        Usage periods follow the billing grid (``sale.order.x_fc_period_anchor``), which moves when
        the Date of Next Invoice does (a person edits it, a re-import, an upgrade); events filed
        before the move sit under the old grid's periods, which no close would ever reach.
        Returns the ids of rows kept under their own period because this period's row was closed
        already (the caller closes them too)."""
        if not periods_by_order:
            return []
        cr = self.env.cr
        keys = [(order_id, start, end, order_id in final_ids) for order_id, (start, end) in periods_by_order.items()]
        cr.execute(f"""
            SELECT u.id, u.subscription_id, u.metric_id, u.period_start, u.period_end, u.quantity, u.events_count,
                   u.last_event_at, u.source, u.quota_notified, m.aggregation
              FROM fusion_billing_usage u
              JOIN fusion_billing_metric m ON m.id = u.metric_id
              JOIN (VALUES {", ".join(["(%s, %s::date, %s::date, %s::bool)"] * len(keys))})
                   AS v(order_id, start, stop, final) ON u.subscription_id = v.order_id
             WHERE u.state = 'open' AND u.period_start != v.start AND (v.final OR u.period_start < v.stop)
          ORDER BY u.period_start, u.id
               FOR UPDATE OF u""", [value for key in keys for value in key])
        stranded = defaultdict(list)
        for row in cr.fetchall():
            stranded[(row[1], row[2])].append(row)
        if not stranded:
            return []
        cr.execute(f"""
            SELECT u.id, u.subscription_id, u.metric_id, u.period_start, u.period_end, u.quantity, u.events_count,
                   u.last_event_at, u.source, u.quota_notified, m.aggregation, u.state
              FROM fusion_billing_usage u JOIN fusion_billing_metric m ON m.id = u.metric_id
             WHERE (u.subscription_id, u.metric_id, u.period_start) IN %s FOR UPDATE OF u""",
                   (tuple((order_id, metric_id, periods_by_order[order_id][0]) for order_id, metric_id in stranded),))
        targets = {(row[1], row[2]): row for row in cr.fetchall()}
        kept_apart, merged, gone = [], [], []
        for (order_id, metric_id), rows in stranded.items():
            start, end = periods_by_order[order_id]
            target = targets.get((order_id, metric_id))
            if target and target[11] == "open":
                keep, bounds = target, (start, end)
            elif target:  # this period is closed already: the oldest row takes the rest, closed as it is
                keep, bounds = rows[0], (rows[0][3], rows[0][4])
                kept_apart.append(keep[0])
            else:  # no row of this period yet (a metric no charge prices): the oldest is moved into it
                keep, bounds = rows[0], (start, end)
            parts = sorted({row[0]: row for row in rows + [keep]}.values(), key=lambda row: (row[3], row[0]))
            kind, total = keep[10], None
            for row in parts:
                contribution = self._fc_start(_Row(row[0], metric_id, row[5], row[6], row[7], "open", row[8], row[9]))
                if contribution is not None:
                    total = self._fc_merge(kind, total, contribution)
            total = total or (keep[5] or 0, keep[6] or 0, keep[7])
            quantity = total[0]
            if kind == "unique_count":
                # Distinct values over the events of all of them, up to this period's end (events filed
                # under the old grid after it are in its next period's row, under the new one), or all
                # of them for a last period.
                last = order_id in final_ids or keep[0] in kept_apart
                quantity = self._fc_count_unique(order_id, metric_id, min([bounds[0]] + [row[3] for row in parts]),
                                                 max([bounds[1]] + [row[4] for row in parts]) if last else bounds[1])
            merged.append((keep[0], bounds[0], bounds[1], quantity, total[1], total[2],
                           any(row[9] for row in parts)))
            gone += [row[0] for row in parts if row[0] != keep[0]]
        if gone:
            cr.execute("DELETE FROM fusion_billing_usage WHERE id IN %s", (tuple(gone),))
        cr.execute(f"""
            UPDATE fusion_billing_usage usage
               SET period_start = v.start, period_end = v.stop, quantity = v.quantity, events_count = v.events_count,
                   last_event_at = v.last_event_at, quota_notified = v.notified, write_uid = %s, write_date = %s
              FROM (VALUES {", ".join(["(%s, %s::date, %s::date, %s::numeric, %s::int, %s::timestamp, %s::bool)"]
                                      * len(merged))})
                   AS v(id, start, stop, quantity, events_count, last_event_at, notified)
             WHERE usage.id = v.id""", [self.env.uid, fields.Datetime.now()] + [v for row in merged for v in row])
        _logger.info("Usage close: %s rows filed under other periods merged into the periods closed (%s orders)",
                     len(gone) + len(merged), len({order_id for order_id, _metric in stranded}))
        return kept_apart

    @api.model
    def _fc_record_amounts(self, amounts, state, invoice_lines=None, sale_lines=None):
        """Period close: set many rows' rated amount (``amounts``: id → Decimal, None keeps it),
        ``state``, invoice line (``invoice_lines``: id → line id) and order line (``sale_lines``:
        id → line id) in one statement."""
        if not amounts:
            return
        invoice_lines, sale_lines = invoice_lines or {}, sale_lines or {}
        self.flush_model(["amount", "state", "invoice_line_id", "sale_line_id"])
        rows = [(usage_id, None if amount is None else str(amount), invoice_lines.get(usage_id),
                 sale_lines.get(usage_id)) for usage_id, amount in amounts.items()]
        self.env.cr.execute(f"""
            UPDATE fusion_billing_usage usage
               SET amount = COALESCE(v.amount, usage.amount), state = %s,
                   invoice_line_id = COALESCE(v.line, usage.invoice_line_id),
                   sale_line_id = COALESCE(v.sale_line, usage.sale_line_id), write_uid = %s, write_date = %s
              FROM (VALUES {", ".join(["(%s, %s::numeric, %s::int, %s::int)"] * len(rows))})
                   AS v(id, amount, line, sale_line)
             WHERE usage.id = v.id""", [state, self.env.uid, fields.Datetime.now()] + [v for row in rows for v in row])
        self.invalidate_model(["amount", "state", "invoice_line_id", "sale_line_id", "write_uid", "write_date"])
        # The raw update bypasses the ORM: recompute what depends on the state.
        self.browse(list(amounts)).modified(["state", "amount"])

    @api.model
    def _fc_insert_rows(self, rows, quota=False):
        """Insert open usage rows: ``rows`` [(subscription id, metric id, period start, period end,
        quantity, events count, last event at)]; service, customer and company are the
        subscription's. A row already there is kept (``ON CONFLICT DO NOTHING``); with ``quota``
        (a row of no usage that only carries the flag), the existing row's quota flag is set
        instead, unless it is set already or the row is no longer open: only the first
        transaction to cross the quota gets its id back. Returns the ids written."""
        now = fields.Datetime.now()
        conflict = ("DO UPDATE SET quota_notified = true WHERE NOT COALESCE(usage.quota_notified, false) "
                    "AND usage.state = 'open'") if quota else "DO NOTHING"
        self.env.cr.execute(f"""
            INSERT INTO fusion_billing_usage AS usage
                   (subscription_id, metric_id, period_start, period_end, quantity, events_count, last_event_at,
                    source, state, quota_notified, service_id, partner_id, company_id,
                    create_uid, create_date, write_uid, write_date)
            SELECT v.subscription_id, v.metric_id, v.period_start, v.period_end, v.quantity, v.events_count,
                   v.last_event_at, 'events', 'open', %s, so.x_fc_service_id, so.partner_id, so.company_id,
                   %s, %s, %s, %s
              FROM (VALUES {", ".join(["(%s::int, %s::int, %s::date, %s::date, %s::numeric, %s::int, %s::timestamp)"]
                                      * len(rows))})
                   AS v(subscription_id, metric_id, period_start, period_end, quantity, events_count, last_event_at)
              JOIN sale_order so ON so.id = v.subscription_id
            ON CONFLICT (subscription_id, metric_id, period_start) {conflict}
            RETURNING usage.id""", [bool(quota), self.env.uid, now, self.env.uid, now] + [v for row in rows for v in row])
        return [row[0] for row in self.env.cr.fetchall()]

    @api.model
    def _contribution(self, metric, events):
        """(quantity, latest timestamp) of a group of events under the metric's aggregation."""
        result = aggregation.aggregate(metric.aggregation, [
            {"timestamp": (event["timestamp"], event["id"]), "properties": event["properties"]} for event in events
        ], metric.field_name)
        return result.units, max(event["timestamp"] for event in events)

    @api.model
    def _fc_notify_quota(self, subscription_id, metric, period_start, period_end, units):
        """Send ``subscription.usage_threshold_reached`` once per period when the included quota is
        used up (``units``: the period's total), the hard-quota signal apps use to gate features
        (Lago issue #209). Exactly once: the flag is set by one ``INSERT … ON CONFLICT`` that only
        the first transaction to cross the quota wins (the only write of a usage row by ingestion,
        once per period)."""
        if not self._fc_insert_rows([(subscription_id, metric.id, period_start, period_end, 0, 0, None)], quota=True):
            return
        subscription = self.env["sale.order"].browse(subscription_id)
        charge = subscription._fc_charges().filtered(lambda c: c.metric_id == metric)[:1]
        obj = subscription._fc_webhook_object()
        obj["usage_threshold"] = {"billable_metric_code": metric.code, "included_units": str(charge.included_quantity),
                                  "units": str(float(units)), "period_start": str(period_start)}
        self.env["fusion.billing.webhook"]._enqueue(
            subscription.x_fc_service_id, "subscription.usage_threshold_reached", subscription, obj=obj)
