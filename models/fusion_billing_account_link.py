from odoo import api, fields, models

from ..core import lago


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

    # ------------------------------------------------------------------ Lago API
    # Lago customer key → res.partner field (only keys present in a payload are written).
    _PARTNER_FIELDS = {
        "email": "email", "phone": "phone", "url": "website", "address_line1": "street",
        "address_line2": "street2", "city": "city", "zipcode": "zip",
        "tax_identification_number": "vat", "timezone": "tz",
    }

    @api.model
    def _api_find(self, service, external_id):
        return self.search([("service_id", "=", service.id), ("external_id", "=", external_id)], limit=1)

    @api.model
    def _api_upsert(self, service, clean):
        """Lago ``POST /customers``: create or update the app's customer (present keys only).

        A new account reuses the partner already representing the client (by normalised
        e-mail, e.g. a NexaDesk customer) instead of duplicating it.
        """
        link = self.with_context(active_test=False)._api_find(service, clean["external_id"])
        partner_values = self._api_partner_values(clean)
        link_values = {key: clean[key] for key in ("email",) if key in clean}
        extra = {k: v for k, v in clean.items() if k not in self._PARTNER_FIELDS and k not in (
            "external_id", "name", "firstname", "lastname", "country", "customer_type")}
        if link:
            if partner_values:
                link.partner_id.write(partner_values)
            link.write(dict(link_values, active=True, metadata=dict(link.metadata or {}, **extra)))
            link._fc_notify("customer.updated")
            return link
        partner = self._find_partner(clean.get("email"))
        if partner:  # another app's client: only fill what Odoo does not know yet
            partner.write({k: v for k, v in partner_values.items() if not partner[k]})
        else:
            partner = self.env["res.partner"].create(
                dict(partner_values, name=partner_values.get("name") or clean["external_id"]))
        link = self.create(dict(link_values, service_id=service.id, external_id=clean["external_id"],
                                partner_id=partner.id, metadata=extra))
        link._fc_notify("customer.created")
        return link

    @api.model
    def _api_partner_values(self, clean):
        values = {field: clean[key] for key, field in self._PARTNER_FIELDS.items() if key in clean}
        name = clean.get("name") or " ".join(filter(None, [clean.get("firstname"), clean.get("lastname")]))
        if name:
            values["name"] = name
        if "customer_type" in clean and clean["customer_type"]:
            values["company_type"] = "company" if clean["customer_type"] == "company" else "person"
        if clean.get("country"):
            country = self.env["res.country"].search([("code", "=", clean["country"].upper())], limit=1)
            values["country_id"] = country.id or False
        return values

    def _api_delete(self):
        """Lago ``DELETE /customers/{id}``: soft delete; live subscriptions are terminated."""
        self.ensure_one()
        values = self._api_values()
        for subscription in self.subscription_ids.filtered(lambda s: s._api_status() in ("active", "pending")):
            subscription._api_terminate()
        self.active = False
        return values

    def _api_values(self):
        self.ensure_one()
        partner = self.partner_id
        metadata = self.metadata or {}
        return {
            "lago_id": str(self.id),
            "external_id": self.external_id,
            "sequential_id": self.id,
            "slug": f"{self.service_id.code}-{self.id}",
            "name": partner.name,
            "firstname": metadata.get("firstname"),
            "lastname": metadata.get("lastname"),
            "customer_type": "company" if partner.is_company else "individual",
            "email": self.email or partner.email,
            "phone": partner.phone,
            "url": partner.website,
            "address_line1": partner.street,
            "address_line2": partner.street2,
            "city": partner.city,
            "zipcode": partner.zip,
            "state": partner.state_id.name,
            "country": partner.country_id.code,
            "legal_name": metadata.get("legal_name"),
            "legal_number": metadata.get("legal_number"),
            "tax_identification_number": partner.vat,
            "currency": self.service_id.currency_id.name,
            "timezone": partner.tz,
            "applicable_timezone": partner.tz or "UTC",
            "net_payment_term": metadata.get("net_payment_term"),
            "billing_configuration": metadata.get("billing_configuration") or {},
            "metadata": metadata.get("metadata") or [],
            "created_at": self.create_date,
            "updated_at": self.write_date,
        }

    def _fc_webhook_object(self):
        return lago.customer(self._api_values())

    def _fc_notify(self, webhook_type):
        """Queue an outbound webhook about these records to their app."""
        for link in self:
            self.env["fusion.billing.webhook"]._enqueue(link.service_id, webhook_type, link)
