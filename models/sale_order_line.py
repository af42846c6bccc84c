from odoo import api, fields, models

from .code_fields import check_code_fields

USAGE, PLAN_CREDIT = "usage", "plan_credit"
# Written by code only (``code_fields``): what a billing line is, what it bills and whether it awaits
# its invoice; and, on a billing line, what it bills (a quantity of 3 would bill the usage 3 times),
# its discount and its taxes (Odoo's own Update Taxes maps them as code: ``sale.order._recompute_taxes``).
CODE_FIELDS = frozenset({"x_fc_line_kind", "x_fc_charge_id", "x_fc_usage_id", "x_fc_pending"})
BILLING_LINE_CODE_FIELDS = frozenset({"product_id", "product_uom_qty", "price_unit", "discount", "tax_ids"})


class SaleOrderLine(models.Model):
    """Lines the billing cycle adds to a subscription: a usage charge's amount for a closed period,
    or the prorated credit of a plan upgrade. They are one-shot lines that the native recurring
    invoice picks up, and they are invoiceable only while *pending*: once an invoice carrying them
    is posted they never become invoiceable again, whatever happens to that invoice afterwards
    (credit note, cancellation, reset to draft), unlike Community's quantity-based rule."""

    _inherit = "sale.order.line"

    x_fc_line_kind = fields.Selection(
        [(USAGE, "Usage"), (PLAN_CREDIT, "Plan change credit")], string="Billing Line",
        readonly=True, copy=False, index="btree_not_null",
        help="Added by the billing cycle; priced by it, never by the pricelist.")
    x_fc_charge_id = fields.Many2one("fusion.billing.charge", string="Usage Charge", readonly=True, copy=False)
    x_fc_usage_id = fields.Many2one(
        "fusion.billing.usage", string="Usage Period", readonly=True, copy=False, index="btree_not_null",
        help="The usage row this line bills (while pending) or billed last: one line per charge is "
             "reused period after period, so the order shows the latest usage, not its history.")
    x_fc_pending = fields.Boolean(
        string="Awaiting Invoice", readonly=True, copy=False,
        help="Billed on the subscription's next invoice; cleared once an invoice carrying it is posted.")

    @api.model_create_multi
    def create(self, vals_list):
        check_code_fields(self, vals_list, CODE_FIELDS, create=True)
        return super().create(vals_list)

    def write(self, vals):
        check_code_fields(self, [vals], CODE_FIELDS)
        check_code_fields(self.filtered("x_fc_line_kind"), [vals], BILLING_LINE_CODE_FIELDS)
        return super().write(vals)

    @api.depends("x_fc_pending", "x_fc_line_kind", "x_fc_usage_id", "invoice_lines.move_id.state",
                 "invoice_lines.x_fc_usage_id")
    def _compute_qty_to_invoice(self):
        res = super()._compute_qty_to_invoice()
        for line in self.filtered("x_fc_line_kind"):
            line.qty_to_invoice = line.product_uom_qty \
                if line.x_fc_pending and line.state == "sale" and not line._fc_on_draft_invoice() else 0.0
        return res

    def _fc_on_draft_invoice(self):
        """Whether what this pending line bills is already on a draft invoice (e.g. the native
        *Create Invoice* left one): the recurring run or a final invoice must not bill it a second
        time; posting that draft bills it, deleting or cancelling it makes it invoiceable again."""
        self.ensure_one()
        return any(line.move_id.state == "draft" and line.move_id.move_type == "out_invoice"
                   and (self.x_fc_line_kind != USAGE or line.x_fc_usage_id == self.x_fc_usage_id)
                   for line in self.invoice_lines)

    def _compute_tax_ids(self):
        # A plan change's credit is taxed as a fee (its product has no taxes of its own): created with
        # the taxes of the fee it gives back, mapped again by Update Taxes as its order's fee is (a
        # service's plans are taxed alike); kept as they are on an order without a fee line.
        credits = self.filtered(lambda line: line.x_fc_line_kind == PLAN_CREDIT)
        res = super(SaleOrderLine, self - credits)._compute_tax_ids()
        for line in credits:
            fees = line.order_id._fc_fee_lines()
            line.tax_ids = fees.tax_ids if fees else line.tax_ids
        return res

    def _compute_price_unit(self):
        # The billing cycle prices its lines (a rated amount, a prorated credit): the pricelist never does.
        return super(SaleOrderLine, self.filtered(lambda line: not line.x_fc_line_kind))._compute_price_unit()

    def _prepare_invoice_line(self, **optional_values):
        values = super()._prepare_invoice_line(**optional_values)
        if self.x_fc_line_kind == USAGE and self.x_fc_usage_id:
            values["x_fc_usage_id"] = self.x_fc_usage_id.id
        return values
