import json

from odoo import api, fields, models
from odoo.exceptions import UserError, ValidationError

from ..core import rating

CHARGE_MODEL_LABELS = {
    "standard": "Standard (per unit)",
    "package": "Package (per started block)",
    "graduated": "Graduated (tiers summed)",
    "volume": "Volume (one tier for all units)",
    "percentage": "Percentage (rate on an amount)",
}


class FusionBillingCharge(models.Model):
    """Catalog plan + metric → included quota, then overage priced by a Lago charge model.

    ``plan_id`` may be empty: the importer creates shadow charges without a plan so
    they stay inert until someone attaches them to a catalog plan.
    """

    _name = "fusion.billing.charge"
    _description = "Usage Charge"
    _inherit = ["mail.thread"]
    _order = "service_id, plan_id, sequence, id"
    _check_company_auto = True

    name = fields.Char(compute="_compute_name", store=True, readonly=False, required=True, precompute=True)
    code = fields.Char(help="Charge code returned to apps (defaults to the metric code).")
    sequence = fields.Integer(default=10)
    active = fields.Boolean(default=True)
    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="restrict", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    currency_id = fields.Many2one(related="service_id.currency_id")
    plan_id = fields.Many2one(
        "sale.subscription.plan", string="Catalog Plan", ondelete="restrict", index=True, tracking=True,
        help="Subscriptions on this plan are charged. Empty: inert (e.g. imported in shadow).")
    plan_code = fields.Char(
        tracking=True,
        help="Catalog plan code this charge belongs to, kept even while the plan reference is empty.")
    metric_id = fields.Many2one(
        "fusion.billing.metric", required=True, ondelete="restrict", index=True, tracking=True,
        check_company=True, domain="[('service_id', '=', service_id)]")
    product_id = fields.Many2one(
        "product.product", string="Invoice Product", tracking=True, domain=[("recurring_invoice", "=", False)],
        help="Product of the usage invoice line: its income account and taxes (HST) apply; never a recurring "
             "product (Odoo would bill it again every period). Empty: the generic 'Metered usage' product.")
    included_quantity = fields.Float(
        digits=(16, 6), tracking=True,
        help="Units included in the plan each period; only usage above it is priced.")
    charge_model = fields.Selection(
        [(key, CHARGE_MODEL_LABELS[key]) for key in rating.CHARGE_MODELS],
        required=True, default="standard", tracking=True)
    properties = fields.Json(
        default=lambda self: {"amount": "0"},
        help="Lago charge properties (decimal strings in major units), e.g. {\"amount\": \"0.02\"}.")
    properties_text = fields.Text(
        string="Pricing", compute="_compute_properties_text", inverse="_inverse_properties_text",
        help="The charge properties as JSON, exactly as Lago's API shows them.")
    invoice_display_name = fields.Char(help="Label of the invoice line (defaults to the metric name).")

    _plan_metric_uniq = models.UniqueIndex(
        "(service_id, COALESCE(plan_code, ''), metric_id) WHERE active",
        "A plan has at most one active charge per metric.")
    _included_positive = models.Constraint(
        "CHECK(included_quantity >= 0)", "The included quantity cannot be negative.")

    @api.depends("metric_id", "plan_code")
    def _compute_name(self):
        for charge in self:
            charge.name = " / ".join(filter(None, [charge.plan_code, charge.metric_id.name])) or charge.name

    @api.depends("properties")
    def _compute_properties_text(self):
        for charge in self:
            charge.properties_text = json.dumps(charge.properties or {}, indent=2, sort_keys=True)

    def _inverse_properties_text(self):
        for charge in self:
            try:
                value = json.loads(charge.properties_text or "{}")
            except ValueError as exc:
                raise ValidationError(self.env._("Pricing is not valid JSON: %s", exc)) from None
            charge.properties = value

    @api.constrains("charge_model", "properties")
    def _check_properties(self):
        for charge in self:
            errors = rating.validate_properties(charge.charge_model, charge.properties or {})
            if errors:
                details = "; ".join(f"{field}: {', '.join(codes)}" for field, codes in sorted(errors.items()))
                raise ValidationError(self.env._(
                    "Charge '%(name)s' has invalid %(model)s pricing: %(details)s",
                    name=charge.name, model=charge.charge_model, details=details))

    @api.constrains("product_id")
    def _check_product_not_recurring(self):
        for charge in self.filtered("product_id.recurring_invoice"):
            raise ValidationError(charge._fc_recurring_product_message(charge.product_id))

    def _fc_recurring_product_message(self, product):
        return self.env._(
            "Charge '%(name)s': its invoice product %(product)s is a recurring (subscription) product, which "
            "Odoo's recurring run would bill again every period. Choose a product that is not recurring.",
            name=self.name, product=product.display_name)

    @api.onchange("plan_id")
    def _onchange_plan_id(self):
        if self.plan_id.x_fc_plan_code:
            self.plan_code = self.plan_id.x_fc_plan_code

    def _rate(self, units, events_count=0, event_amounts=None):
        """Rate ``units`` of one period with this charge (included quota first)."""
        self.ensure_one()
        return rating.rate(
            self.charge_model, self.properties or {}, units,
            included_units=self.included_quantity, events_count=events_count,
            event_amounts=event_amounts, decimals=self.currency_id.decimal_places)

    def _fc_product(self):
        """Product of this charge's invoice lines (taxes, income account)."""
        self.ensure_one()
        return self.product_id or self.env.ref("fusion_centralize_billing.product_metered_usage")

    def _fc_billing_product(self):
        """``_fc_product`` for a usage line, refused when recurring (a charge saved before products
        were checked, or a product changed since outside the ORM): the close sets the subscription
        aside with this reason rather than add a line that Odoo would treat as recurring."""
        product = self._fc_product()
        if product.recurring_invoice:
            raise UserError(self._fc_recurring_product_message(product))
        return product

    def _fc_invoice_label(self, rating, first_day, last_day):
        """Invoice line text: metric, units, included quota and period."""
        self.ensure_one()
        uom = self.metric_id.uom_id.name or self.metric_id.code
        label = self.invoice_display_name or self.metric_id.name
        return self.env._(
            "%(label)s: %(units)s %(uom)s used, %(included)s included, %(billable)s billed (%(first)s to %(last)s)",
            label=label, units=_fmt(rating.units), uom=uom, included=_fmt(rating.included_units),
            billable=_fmt(rating.billable_units), first=first_day, last=last_day)

    def _api_values(self):
        self.ensure_one()
        properties = dict(self.properties or {})
        if self.included_quantity:
            # Our extension: units included in the plan before this charge model applies.
            properties["included_units"] = str(self.included_quantity)
        return {
            "lago_id": str(self.id),
            "lago_billable_metric_id": str(self.metric_id.id),
            "billable_metric_code": self.metric_id.code,
            "code": self.code or self.metric_id.code,
            "invoice_display_name": self.invoice_display_name or self.metric_id.name,
            "created_at": self.create_date,
            "charge_model": self.charge_model,
            "pay_in_advance": False,
            "invoiceable": True,
            "regroup_paid_fees": None,
            "prorated": False,
            "min_amount_cents": 0,
            "properties": properties,
            "filters": [],
            "taxes": [],
        }


def _fmt(number):
    return format(number.normalize(), "f")
