from markupsafe import Markup, escape

from odoo import api, fields, models
from odoo.exceptions import AccessError

from ..core import lago

# The contact fields an app (API or import) may hold about its client. The values the app last
# wrote are kept on its account: any other value found there later means a person edited it.
APP_PARTNER_FIELDS = ("name", "email", "phone", "website", "street", "street2", "city", "zip", "vat", "tz",
                      "country_id", "company_type", "company_name")
# Fields only code writes (a user writing them could make the app overwrite a contact).
CODE_FIELDS = frozenset({"partner_created", "partner_synced", "app_values"})


def normalise_email(email):
    """Trim + case-fold: how one person's e-mail is compared across apps."""
    return (email or "").strip().casefold() or False


def plain(value):
    """A contact field value as stored on the account (JSON) and compared: ids for records,
    stripped text, False for empty."""
    if isinstance(value, models.BaseModel):
        return value.id or False
    if isinstance(value, str):
        return value.strip() or False
    return value or False


def same(field, left, right):
    if field == "email":
        return normalise_email(left) == normalise_email(right)
    return plain(left) == plain(right)


class FusionBillingAccountLink(models.Model):
    """An app's customer account (external id) mapped to the one partner of that real client.

    One partner per client across services; one link per (service, external id). Identity rules
    (issue 16 §1), whoever calls (the API's technical user, the importer, a person):

    * an account is linked automatically only to a *customer contact* of its service's company
      (``_fc_linkable``): never an Odoo user's contact (internal or portal, archived too), a
      company's own contact, another company's, an address or a non-customer (e.g. a vendor);
    * the app writes contact fields only onto the contact its own account created, while no other
      account shares it and no person edited it since (``_fc_writes_partner``); otherwise its
      values stay on the account (``app_values``) and differences are shown for review;
    * linking an account to a contact another account already uses is recorded in the chatter.
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
        "res.partner", required=True, ondelete="restrict", index=True, tracking=True, check_company=True,
        help="The single contact that represents this client in Odoo, shared by every app.")
    partner_created = fields.Boolean(
        string="Created Its Contact", readonly=True, copy=False,
        help="This account created its contact: while nobody edits the contact in Odoo and no other account "
             "shares it, the app's changes are written onto it. Otherwise they stay on this account.")
    partner_synced = fields.Json(
        readonly=True, copy=False, help="The contact's fields as the app last wrote them (an edit in Odoo shows here).")
    app_values = fields.Json(
        string="Values from the App", readonly=True, copy=False,
        help="The contact fields as the app (API or import) last sent them.")
    partner_differs = fields.Boolean(
        string="Differs from Contact", compute="_compute_partner_differs", store=True,
        help="What the app sent differs from the contact in Odoo: review it (Odoo's contact is what bills).")
    partner_differences = fields.Html(
        string="Differences", compute="_compute_partner_differences", sanitize=False, compute_sudo=True)
    api_name = fields.Char(
        string="Name in the App", compute="_compute_api_name", store=True, compute_sudo=True,
        help="The name this app sees for its customer (what it sent, or its own contact's): what the API "
             "returns and searches, never a name another app or a person gave a shared contact.")
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

    @api.model_create_multi
    def create(self, vals_list):
        if not self.env.su and any(CODE_FIELDS & set(vals) for vals in vals_list):
            raise AccessError(self.env._("Only Odoo sets how an app account may write its contact."))
        return super().create(vals_list)

    def write(self, vals):
        if not self.env.su and CODE_FIELDS & set(vals):
            raise AccessError(self.env._("Only Odoo sets how an app account may write its contact."))
        if "partner_id" in vals and not CODE_FIELDS & set(vals):
            # Linked to another contact by hand: the app did not create that one.
            vals = dict(vals, partner_created=False, partner_synced=False)
        return super().write(vals)

    @api.depends("app_values", "partner_id", *(f"partner_id.{name}" for name in APP_PARTNER_FIELDS))
    def _compute_partner_differs(self):
        for link in self:
            link.partner_differs = bool(link._fc_partner_differences())

    @api.depends("app_values", "partner_created", "partner_id.name")
    def _compute_api_name(self):
        for link in self:
            link.api_name = link._fc_customer()["name"] or False

    @api.depends("partner_differs", "app_values")
    def _compute_partner_differences(self):
        for link in self:
            rows = link._fc_partner_differences()
            link.partner_differences = Markup(
                "<table class='table table-sm'><thead><tr><th>Field</th><th>From the app</th><th>Contact in Odoo</th>"
                "</tr></thead><tbody>%s</tbody></table>") % Markup("").join(
                Markup("<tr><td>%s</td><td>%s</td><td>%s</td></tr>") % row for row in rows) if rows else False

    def _fc_partner_differences(self):
        """[(label, app value, contact value)] of the fields the app sent that the contact does not hold."""
        self.ensure_one()
        partner = self.partner_id.sudo()
        fields_ = partner._fields
        rows = []
        for name, value in (self.app_values or {}).items():
            if name in fields_ and not same(name, value, partner[name]):
                rows.append((fields_[name].string, self._fc_display(name, value), self._fc_display(name, partner[name])))
        return rows

    def _fc_display(self, name, value):
        field = self.env["res.partner"]._fields[name]
        if field.type == "many2one":
            value = self.env[field.comodel_name].sudo().browse(plain(value)).display_name if plain(value) else False
        elif field.type == "selection":
            value = dict(field._description_selection(self.env)).get(value, value)
        return escape(value or "—")

    @api.depends("email")
    def _compute_email_normalised(self):
        for link in self:
            link.email_normalised = normalise_email(link.email)

    @api.depends("service_id", "external_id")
    def _compute_display_name(self):
        for link in self:
            link.display_name = f"{link.service_id.name or ''}: {link.external_id or ''}"

    # ------------------------------------------------------------------ identity
    @api.model
    def _fc_linkable(self, partners, company):
        """The ``partners`` an app account of ``company`` may be linked to automatically: active
        customer contacts of that company (or shared), never an Odoo user's contact (internal or
        portal, archived users too), a company's own contact or an address."""
        partners = partners.sudo().with_context(active_test=False).exists()
        if not partners:
            return partners
        around = partners | partners.commercial_partner_id
        users = set(self.env["res.users"].sudo().with_context(active_test=False).search(
            [("partner_id", "in", around.ids)]).partner_id.ids)
        companies = set(self.env["res.company"].sudo().with_context(active_test=False).search(
            [("partner_id", "in", around.ids)]).partner_id.ids)
        linked = set(self.sudo().with_context(active_test=False).search(
            [("partner_id", "in", partners.ids)]).partner_id.ids)

        def linkable(partner):
            commercial = partner.commercial_partner_id
            return (partner.active and partner.type == "contact"
                    and not {partner.id, commercial.id} & (users | companies)
                    and (not partner.company_id or partner.company_id == company)
                    and (not commercial.company_id or commercial.company_id == company)
                    and (partner.customer_rank > 0 or commercial.customer_rank > 0 or partner.id in linked))
        return partners.filtered(linkable)

    @api.model
    def _fc_find_partners(self, emails, company):
        """{normalised e-mail: partner} of the contacts representing these e-mails that an account of
        ``company`` may share: one an app account already uses first, else a customer contact.

        A contact is found by its own e-mail only. The e-mail an app gave its account is the app's
        word (unverified, and kept on the account when the app may not write the contact): were it
        matched, app A could steer app B's new customers onto a contact of A's choosing."""
        emails = {normalise_email(email) for email in emails} - {False}
        if not emails:
            return {}
        partners = self.env["res.partner"].sudo().with_context(active_test=False).search(
            [("email_normalized", "in", list(emails))], order="id")
        allowed = self._fc_linkable(partners, company)
        used = set(self.sudo().with_context(active_test=False).search(
            [("partner_id", "in", allowed.ids)]).partner_id.ids)
        found = {}
        for partner in allowed.sorted(lambda partner: (partner.id not in used, partner.id)):
            email = normalise_email(partner.email_normalized)
            if email in emails:
                found.setdefault(email, partner)
        return found

    @api.model
    def _fc_partner_snapshot(self, partner):
        return {name: plain(partner[name]) for name in APP_PARTNER_FIELDS}

    @api.model
    def _fc_new_partner_values(self, values, service, fallback_name):
        """A new contact for an app's client: a customer of the service's company."""
        return dict(values, name=values.get("name") or fallback_name, customer_rank=1,
                    company_id=service.company_id.id)

    def _fc_writes_partner(self):
        """Whether the app may write onto this account's contact now (see the class docstring)."""
        self.ensure_one()
        partner = self.partner_id.sudo()
        return bool(
            self.partner_created
            and self._fc_linkable(partner, self.company_id)
            and not self.sudo().with_context(active_test=False).search_count(
                [("partner_id", "=", partner.id), ("id", "!=", self.id)], limit=1)
            and self._fc_partner_snapshot(partner) == (self.partner_synced or {}))

    def _fc_take_app_values(self, values):
        """What the app sent about its client (contact field → value): kept on the account, and
        written onto the contact only where ``_fc_writes_partner`` allows. True if written."""
        self.ensure_one()
        updates = {"app_values": dict(self.app_values or {}, **{name: plain(value) for name, value in values.items()})}
        written = bool(values) and self._fc_writes_partner()
        if written:
            partner = self.partner_id.sudo()
            partner.write(values)
            updates["partner_synced"] = self._fc_partner_snapshot(partner)
        if updates["app_values"] != (self.app_values or {}) or written:
            self.sudo().write(updates)
        return written

    def _fc_record_merge(self):
        """Chatter of the contact (and of the account): this account now shares it with others."""
        for link in self:
            others = self.sudo().with_context(active_test=False).search(
                [("partner_id", "=", link.partner_id.id), ("id", "!=", link.id)])
            if not others:
                continue
            body = self.env._(
                "App account %(account)s (e-mail %(email)s) was linked to this contact, which already represents "
                "%(others)s. Its values are kept on the account; differences are shown there for review.",
                account=link.display_name, email=link.email or "—", others=", ".join(others.mapped("display_name")))
            link.partner_id.sudo().message_post(body=body)
            link.sudo().message_post(body=body)

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

        A new account reuses the contact already representing the client (by normalised e-mail,
        e.g. a NexaDesk customer) when ``_fc_linkable`` allows it, instead of duplicating it.
        """
        link = self.with_context(active_test=False)._api_find(service, clean["external_id"])
        partner_values = self._api_partner_values(clean)
        link_values = {key: clean[key] for key in ("email",) if key in clean}
        extra = {k: v for k, v in clean.items() if k not in self._PARTNER_FIELDS and k not in (
            "external_id", "name", "firstname", "lastname", "country", "customer_type")}
        if link:
            link.write(dict(link_values, active=True, metadata=dict(link.metadata or {}, **extra)))
            link._fc_take_app_values(partner_values)
            link._fc_notify("customer.updated")
            return link
        partner = self._fc_find_partners([clean.get("email")], service.company_id).get(normalise_email(clean.get("email")))
        created = not partner
        if created:
            partner = self.env["res.partner"].sudo().create(
                self._fc_new_partner_values(partner_values, service, clean["external_id"]))
        link = self.create(dict(link_values, service_id=service.id, external_id=clean["external_id"],
                                partner_id=partner.id, metadata=extra))
        if created:
            link.sudo().write({"partner_created": True, "partner_synced": self._fc_partner_snapshot(partner),
                               "app_values": {name: plain(value) for name, value in partner_values.items()}})
        else:
            link._fc_take_app_values(partner_values)
            link._fc_record_merge()
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
        partner = self._fc_customer()
        metadata = self.metadata or {}
        country = self.env["res.country"].sudo().browse(partner["country_id"]) if partner["country_id"] else None
        return {
            "lago_id": str(self.id),
            "external_id": self.external_id,
            "sequential_id": self.id,
            "slug": f"{self.service_id.code}-{self.id}",
            "name": partner["name"] or None,
            "firstname": metadata.get("firstname"),
            "lastname": metadata.get("lastname"),
            "customer_type": "company" if partner["company_type"] == "company" else "individual",
            "email": self.email or partner["email"] or None,
            "phone": partner["phone"] or None,
            "url": partner["website"] or None,
            "address_line1": partner["street"] or None,
            "address_line2": partner["street2"] or None,
            "city": partner["city"] or None,
            "zipcode": partner["zip"] or None,
            "state": partner["state"] or None,
            "country": country.code if country else None,
            "legal_name": metadata.get("legal_name"),
            "legal_number": metadata.get("legal_number"),
            "tax_identification_number": partner["vat"] or None,
            "currency": self.service_id.currency_id.name,
            "timezone": partner["tz"] or None,
            "applicable_timezone": partner["tz"] or "UTC",
            "net_payment_term": metadata.get("net_payment_term"),
            "billing_configuration": metadata.get("billing_configuration") or {},
            "metadata": metadata.get("metadata") or [],
            "created_at": self.create_date,
            "updated_at": self.write_date,
        }

    def _fc_customer(self):
        """The client as this app may see it: what it sent, over its own contact's fields only if
        its account created that contact (never another app's or a person's data it did not send)."""
        self.ensure_one()
        partner = self.partner_id.sudo()
        values = self._fc_partner_snapshot(partner) if self.partner_created else dict.fromkeys(APP_PARTNER_FIELDS, False)
        values["state"] = partner.state_id.name if self.partner_created else False
        values.update(self.app_values or {})
        return values

    def _fc_webhook_object(self):
        return lago.customer(self._api_values())

    def _fc_notify(self, webhook_type):
        """Queue an outbound webhook about these records to their app."""
        for link in self:
            self.env["fusion.billing.webhook"]._enqueue(link.service_id, webhook_type, link)
