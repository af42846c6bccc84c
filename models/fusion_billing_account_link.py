from odoo import api, fields, models


def normalise_email(email):
    """Trim + case-fold: how one person's e-mail is compared across apps."""
    return (email or "").strip().casefold() or False


class FusionBillingAccountLink(models.Model):
    """An app's customer account (external id) mapped to the one partner of that real client.

    One partner per client across services; one link per (service, external id).
    """

    _name = "fusion.billing.account.link"
    _description = "Billing Account Link"
    _inherit = ["mail.thread"]
    _order = "service_id, external_id"
    _rec_name = "external_id"
    _check_company_auto = True

    service_id = fields.Many2one(
        "fusion.billing.service", required=True, ondelete="restrict", index=True, tracking=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    external_id = fields.Char(
        string="External Account ID", required=True, tracking=True,
        help="The customer's id in the app (Lago external_id / external_customer_id).")
    partner_id = fields.Many2one(
        "res.partner", required=True, ondelete="restrict", index=True, tracking=True,
        help="The single contact that represents this client in Odoo, shared by every app.")
    email = fields.Char(help="E-mail as the app knows it.")
    email_normalised = fields.Char(compute="_compute_email_normalised", store=True, index=True)
    active = fields.Boolean(default=True, help="Unticked when the app deleted the customer (history is kept).")
    stripe_customer_id = fields.Char(
        string="Stripe Customer (info)", readonly=True,
        help="Stripe id from the app's own billing. Informational only: never used to charge.")
    metadata = fields.Json(help="Lago customer fields Odoo has no column for, kept as sent.")
    subscription_ids = fields.One2many("sale.order", "x_fc_account_link_id", string="Subscriptions")

    _service_external_uniq = models.UniqueIndex(
        "(service_id, external_id)", "This app already has a customer with that external id.")

    @api.depends("email")
    def _compute_email_normalised(self):
        for link in self:
            link.email_normalised = normalise_email(link.email)

    @api.depends("service_id", "external_id")
    def _compute_display_name(self):
        for link in self:
            link.display_name = f"{link.service_id.name or ''}: {link.external_id or ''}"

    @api.model
    def _find_partner(self, email):
        """The partner already representing ``email`` (any app), or an empty recordset."""
        email = normalise_email(email)
        if not email:
            return self.env["res.partner"]
        link = self.search([("email_normalised", "=", email)], limit=1)
        if link:
            return link.partner_id
        return self.env["res.partner"].search([("email_normalized", "=", email)], limit=1)
