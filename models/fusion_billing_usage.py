from odoo import api, fields, models

from ..core import aggregation


class FusionBillingUsage(models.Model):
    """Usage of one metric by one subscription over one billing period (a rollup).

    One row per (subscription, metric, period start): events and pushed counters
    update it in place (``INSERT … ON CONFLICT``), so re-sending never double counts.
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
    def _add_events(self, subscription_id, metric, period_start, period_end, events, included_quantity=0):
        """Fold freshly stored ``events`` (rows with id, timestamp, properties) of one
        subscription/metric/period into its usage row; signal once when the row reaches the
        charge's ``included_quantity``.

        One atomic ``INSERT … ON CONFLICT DO UPDATE`` per row: concurrent workers add up
        instead of overwriting. Events for a period no longer open are marked late.
        """
        quantity, last_event_at = self._contribution(metric, events)
        now = fields.Datetime.now()
        self.env.cr.execute(f"""
            INSERT INTO fusion_billing_usage AS usage
                   (subscription_id, metric_id, period_start, period_end, quantity, events_count, last_event_at,
                    source, state, service_id, partner_id, company_id, create_uid, create_date, write_uid, write_date)
            SELECT so.id, %(metric)s, %(start)s, %(end)s, %(quantity)s, %(count)s, %(last)s,
                   'events', 'open', so.x_fc_service_id, so.partner_id, so.company_id, %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM sale_order so WHERE so.id = %(subscription)s
            ON CONFLICT (subscription_id, metric_id, period_start) DO UPDATE SET
                   quantity = {self._MERGE_SQL[metric.aggregation]},
                   events_count = usage.events_count + EXCLUDED.events_count,
                   last_event_at = GREATEST(usage.last_event_at, EXCLUDED.last_event_at),
                   write_uid = EXCLUDED.write_uid, write_date = EXCLUDED.write_date
             WHERE usage.state = 'open'
            RETURNING id, quantity, quota_notified""", {
            "metric": metric.id, "start": period_start, "end": period_end, "quantity": quantity,
            "count": len(events), "last": last_event_at, "uid": self.env.uid, "now": now,
            "subscription": subscription_id,
        })
        row = self.env.cr.fetchone()
        if not row:
            self.env.cr.execute("UPDATE fusion_billing_event SET state = 'late' WHERE id IN %s",
                                (tuple(event["id"] for event in events),))
            for event in events:
                event["state"] = "late"
            return
        usage_id, quantity, quota_notified = row
        if metric.aggregation == "unique_count":
            quantity = self._recount_unique(usage_id, metric)
        if included_quantity and quantity >= included_quantity and not quota_notified:
            self.browse(usage_id)._fc_check_quota(quantity)

    @api.model
    def _fc_fold(self, subscription_ids):
        """Make the usage rows of these subscriptions exact before they are rated.

        The period close calls it for the subscriptions it has claimed, before reading their rows.
        Ingestion updates the rows in place today, so they are always exact: nothing to do. (The
        append-only ingestion of issue 14 folds its pending deltas here.)"""
        return

    @api.model
    def _fc_close_rows(self, periods_by_order, metric_ids_by_order):
        """Close one period per subscription: ``periods_by_order`` {order id: (start, end)},
        ``metric_ids_by_order`` {order id: metric ids it is charged for}. Rows missing for a
        charged metric are created at 0 (``ON CONFLICT DO NOTHING``: a row a late event created
        meanwhile is kept), then every open row of those periods is flipped to *closed* in one
        ``UPDATE … RETURNING``. Returns {order id: {metric id: (usage id, quantity, events)}}.

        The flip locks the rows: an event arriving for one of them waits, then finds it closed and
        is marked late; one that committed first is in the returned quantity."""
        if not periods_by_order:
            return {}
        self.env.flush_all()
        now, uid = fields.Datetime.now(), self.env.uid
        missing = [(order_id, metric_id, start, end) for order_id, (start, end) in periods_by_order.items()
                   for metric_id in metric_ids_by_order.get(order_id, ())]
        if missing:
            self.env.cr.execute(f"""
                INSERT INTO fusion_billing_usage
                       (subscription_id, metric_id, period_start, period_end, quantity, events_count, source, state,
                        service_id, partner_id, company_id, create_uid, create_date, write_uid, write_date)
                SELECT v.order_id, v.metric_id, v.start, v.stop, 0, 0, 'events', 'open',
                       so.x_fc_service_id, so.partner_id, so.company_id, %s, %s, %s, %s
                  FROM (VALUES {", ".join(["(%s, %s, %s::date, %s::date)"] * len(missing))})
                       AS v(order_id, metric_id, start, stop)
                  JOIN sale_order so ON so.id = v.order_id
                ON CONFLICT (subscription_id, metric_id, period_start) DO NOTHING""",
                [uid, now, uid, now] + [value for row in missing for value in row])
        keys = list(periods_by_order.items())
        self.env.cr.execute(f"""
            UPDATE fusion_billing_usage usage SET state = 'closed', write_uid = %s, write_date = %s
              FROM (VALUES {", ".join(["(%s, %s::date)"] * len(keys))}) AS v(order_id, start)
             WHERE usage.subscription_id = v.order_id AND usage.period_start = v.start AND usage.state = 'open'
         RETURNING usage.id, usage.subscription_id, usage.metric_id, usage.quantity, usage.events_count""",
            [uid, now] + [value for order_id, (start, _end) in keys for value in (order_id, start)])
        rows = {}
        for usage_id, order_id, metric_id, quantity, events in self.env.cr.fetchall():
            rows.setdefault(order_id, {})[metric_id] = (usage_id, quantity or 0.0, events or 0)
        self.invalidate_model()
        return rows

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

    _MERGE_SQL = {
        "count": "usage.quantity + EXCLUDED.quantity",
        "sum": "usage.quantity + EXCLUDED.quantity",
        "max": "GREATEST(usage.quantity, EXCLUDED.quantity)",
        "latest": "CASE WHEN usage.last_event_at IS NULL OR EXCLUDED.last_event_at >= usage.last_event_at "
                  "THEN EXCLUDED.quantity ELSE usage.quantity END",
        "unique_count": "usage.quantity",  # recounted from the events just after
    }

    @api.model
    def _contribution(self, metric, events):
        """(quantity, latest timestamp) of a group of events under the metric's aggregation."""
        result = aggregation.aggregate(metric.aggregation, [
            {"timestamp": (event["timestamp"], event["id"]), "properties": event["properties"]} for event in events
        ], metric.field_name)
        return result.units, max(event["timestamp"] for event in events)

    def _fc_check_quota(self, quantity):
        """Send ``subscription.usage_threshold_reached`` once per period when the included quota is used up
        (``quantity`` is the row's new total), the hard-quota signal apps use to gate features (Lago issue #209)."""
        self.ensure_one()
        charge = self.subscription_id._fc_charges().filtered(lambda c: c.metric_id == self.metric_id)[:1]
        if not charge.included_quantity or quantity < charge.included_quantity:
            return
        self.env.cr.execute("UPDATE fusion_billing_usage SET quota_notified = true WHERE id = %s AND NOT "
                            "COALESCE(quota_notified, false) RETURNING id", (self.id,))
        if self.env.cr.fetchone():
            subscription = self.subscription_id
            obj = subscription._fc_webhook_object()
            obj["usage_threshold"] = {"billable_metric_code": self.metric_id.code, "included_units": str(
                charge.included_quantity), "units": str(float(quantity)), "period_start": str(self.period_start)}
            self.env["fusion.billing.webhook"]._enqueue(
                subscription.x_fc_service_id, "subscription.usage_threshold_reached", subscription, obj=obj)

    @api.model
    def _recount_unique(self, usage_id, metric):
        self.env.cr.execute("""
            UPDATE fusion_billing_usage usage SET quantity = (
                SELECT COUNT(DISTINCT event.properties ->> %s) FROM fusion_billing_event event
                 WHERE event.subscription_id = usage.subscription_id AND event.metric_id = usage.metric_id
                   AND event.timestamp >= usage.period_start AND event.timestamp < usage.period_end
                   AND event.state = 'processed')
             WHERE usage.id = %s
            RETURNING quantity""", (metric.field_name, usage_id))
        return self.env.cr.fetchone()[0]
