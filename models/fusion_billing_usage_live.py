from odoo import fields, models, tools


class FusionBillingUsageLive(models.Model):
    """Usage rows with the deltas not folded yet merged in (a database view), for readers that
    aggregate many subscriptions in SQL (e.g. the service overview). Exact for count, sum, max and
    latest; a unique count shows its row's last fold (at most the fold cron's 5 minutes old) or, with
    no row yet, the largest count of one delta.
    Deltas of a period no longer open are late events and do not count, as for every reader.
    One subscription's period is read exactly with ``fusion.billing.usage._fc_live_totals``.

    A row's id is stable: its usage row's id, or (no usage row yet) minus its first delta's id.
    Its company is its subscription's (multi-company record rule, as the usage rows).
    """

    _name = "fusion.billing.usage.live"
    _description = "Usage (live, with unfolded deltas)"
    _auto = False
    _order = "period_start desc, subscription_id, metric_id"
    _check_company_auto = True

    subscription_id = fields.Many2one("sale.order", readonly=True)
    metric_id = fields.Many2one("fusion.billing.metric", readonly=True)
    service_id = fields.Many2one("fusion.billing.service", readonly=True)
    company_id = fields.Many2one("res.company", readonly=True)
    period_start = fields.Date(readonly=True)
    period_end = fields.Date(readonly=True)
    quantity = fields.Float(digits=(20, 6), readonly=True)
    events_count = fields.Integer(readonly=True)
    state = fields.Selection([("open", "Open"), ("closed", "Closed"), ("billed", "Billed")], readonly=True)

    def init(self):
        tools.drop_view_if_exists(self.env.cr, self._table)
        self.env.cr.execute(f"""
            CREATE VIEW {self._table} AS
            WITH pending AS (
                SELECT d.subscription_id, d.metric_id, d.period_start, max(d.service_id) AS service_id,
                       max(d.period_end) AS period_end,
                       sum(d.quantity) AS sum_quantity, max(d.quantity) AS max_quantity,
                       (array_agg(d.quantity ORDER BY d.last_event_at DESC, d.id DESC))[1] AS latest_quantity,
                       max(d.last_event_at) AS last_event_at, sum(d.events_count) AS events_count,
                       min(d.id) AS first_delta_id
                  FROM fusion_billing_usage_delta d
                 GROUP BY d.subscription_id, d.metric_id, d.period_start)
            SELECT COALESCE(u.id, -p.first_delta_id) AS id,
                   so.company_id AS company_id,
                   COALESCE(u.subscription_id, p.subscription_id) AS subscription_id,
                   COALESCE(u.metric_id, p.metric_id) AS metric_id,
                   COALESCE(u.service_id, p.service_id) AS service_id,
                   COALESCE(u.period_start, p.period_start) AS period_start,
                   COALESCE(u.period_end, p.period_end) AS period_end,
                   CASE WHEN p.subscription_id IS NULL OR u.state IN ('closed', 'billed') THEN u.quantity
                        WHEN u.id IS NULL OR (u.events_count = 0 AND u.source = 'events' AND COALESCE(u.quantity, 0) = 0)
                            THEN CASE m.aggregation WHEN 'max' THEN p.max_quantity
                                                    WHEN 'latest' THEN p.latest_quantity
                                                    WHEN 'unique_count' THEN p.max_quantity
                                                    ELSE p.sum_quantity END
                        WHEN m.aggregation = 'max' THEN GREATEST(u.quantity, p.max_quantity)
                        WHEN m.aggregation = 'latest' THEN
                            CASE WHEN u.last_event_at IS NULL OR p.last_event_at >= u.last_event_at
                                 THEN p.latest_quantity ELSE u.quantity END
                        WHEN m.aggregation = 'unique_count' THEN u.quantity
                        ELSE u.quantity + p.sum_quantity END AS quantity,
                   COALESCE(u.events_count, 0) + CASE WHEN u.state IN ('closed', 'billed') THEN 0
                                                      ELSE COALESCE(p.events_count, 0) END AS events_count,
                   COALESCE(u.state, 'open') AS state
              FROM fusion_billing_usage u
              FULL JOIN pending p ON p.subscription_id = u.subscription_id AND p.metric_id = u.metric_id
                                 AND p.period_start = u.period_start
              JOIN fusion_billing_metric m ON m.id = COALESCE(u.metric_id, p.metric_id)
              JOIN sale_order so ON so.id = COALESCE(u.subscription_id, p.subscription_id)""")
