from odoo import fields, models


class FusionBillingUsageDelta(models.Model):
    """Usage one ingest request added to one subscription, metric and period: append-only.

    The events API never updates a shared row per request (two batches rolling up into one usage
    row used to conflict): it inserts its events and one delta per (subscription, metric, period)
    it touched. A period's usage is its ``fusion.billing.usage`` row plus its deltas: readers add
    them (``fusion.billing.usage._fc_live_totals``), the period close and a cron job fold them in
    (``fusion.billing.usage._fc_fold``) and delete them. Written and read by SQL only.
    """

    _name = "fusion.billing.usage.delta"
    _description = "Usage Delta (not folded yet)"
    _order = "id"
    _log_access = False

    subscription_id = fields.Many2one("sale.order", required=True, ondelete="cascade")
    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade")
    metric_id = fields.Many2one("fusion.billing.metric", required=True, ondelete="cascade")
    period_start = fields.Date(required=True)
    period_end = fields.Date(required=True)
    quantity = fields.Float(digits=(20, 6), help="Units of these events under the metric's aggregation.")
    events_count = fields.Integer()
    last_event_at = fields.Datetime()
    event_ids = fields.Json(help="The events it carries: marked late if their period closed before the fold.")

    _subscription_period_idx = models.Index("(subscription_id, period_start, metric_id)")
