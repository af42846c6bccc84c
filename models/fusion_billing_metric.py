from odoo import api, fields, models
from odoo.tools.misc import formatLang

from ..core import aggregation

AGGREGATION_LABELS = {
    "count": "Count",
    "sum": "Sum",
    "max": "Max",
    "latest": "Latest value",
    "unique_count": "Unique count",
}


class FusionBillingMetric(models.Model):
    """A billable metric: what an app measures (event code) and how a period's events aggregate."""

    _name = "fusion.billing.metric"
    _description = "Billable Metric"
    _inherit = ["mail.thread"]
    _order = "service_id, code"
    _check_company_auto = True

    name = fields.Char(required=True, tracking=True)
    code = fields.Char(
        required=True, tracking=True,
        help="The event code apps send (Lago billable metric code).")
    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="restrict", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    description = fields.Text()
    aggregation = fields.Selection(
        [(key, AGGREGATION_LABELS[key]) for key in aggregation.AGGREGATIONS],
        required=True, default="count", tracking=True,
        help="How a period's events become units: count events, sum/max/latest of a property, "
             "or count distinct values of a property.")
    field_name = fields.Char(
        string="Event Property", tracking=True,
        help="The event property aggregated (required for every aggregation but count).")
    uom_id = fields.Many2one("uom.uom", string="Unit of Measure")
    unit = fields.Char(
        tracking=True, help="Shown after this metric's quantities, e.g. GB, MiB, vCPUs, requests "
                            "(default: the unit of measure's name).")
    decimal_places = fields.Integer(
        string="Decimals", compute="_compute_decimal_places", store=True, readonly=False, precompute=True,
        help="Decimals shown for this metric's quantities (they are stored and rated exactly). "
             "Default: none for counts, 2 otherwise.")
    active = fields.Boolean(default=True)

    _service_code_uniq = models.UniqueIndex(
        "(service_id, code)", "A metric code must be unique per service.")
    _field_required = models.Constraint(
        "CHECK(aggregation = 'count' OR field_name IS NOT NULL)",
        "Every aggregation but count needs the event property it aggregates.")

    @api.depends("aggregation")
    def _compute_decimal_places(self):
        for metric in self:
            metric.decimal_places = 0 if metric.aggregation in ("count", "unique_count") else 2

    def _fc_unit_label(self):
        self.ensure_one()
        return self.unit or self.uom_id.name or ""

    def _fc_format_quantity(self, quantity):
        """``quantity`` as people read it: the metric's decimals, grouped digits, its unit ("131,072 MiB")."""
        self.ensure_one()
        text = formatLang(self.env, float(quantity or 0.0), digits=max(self.decimal_places, 0))
        unit = self._fc_unit_label()
        return f"{text} {unit}" if unit else text

    @api.depends("name", "code")
    def _compute_display_name(self):
        for metric in self:
            metric.display_name = f"{metric.name} ({metric.code})" if metric.code else metric.name

    def _api_values(self):
        self.ensure_one()
        return {
            "lago_id": str(self.id),
            "name": self.name,
            "code": self.code,
            "description": self.description or None,
            "aggregation_type": f"{self.aggregation}_agg",
            "weighted_interval": None,
            "recurring": False,
            "rounding_function": None,
            "rounding_precision": None,
            "created_at": self.create_date,
            "field_name": self.field_name or None,
            "expression": None,
            "filters": [],
        }
