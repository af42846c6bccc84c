from odoo import api, fields, models


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
    invoice_line_id = fields.Many2one("account.move.line", readonly=True, copy=False, ondelete="set null")

    _subscription_metric_period_uniq = models.UniqueIndex(
        "(subscription_id, metric_id, period_start)",
        "Usage is already recorded for this subscription, metric and period.")
    _period_order = models.Constraint(
        "CHECK(period_end > period_start)", "A usage period must end after it starts.")

    @api.depends("metric_id", "period_start")
    def _compute_display_name(self):
        for usage in self:
            usage.display_name = f"{usage.metric_id.code or ''} {usage.period_start or ''}"
