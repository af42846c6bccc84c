"""Identity resolution (issue 16 §1): an app's customer account never takes over an Odoo
user's contact, another company's or a non-customer's; an app writes only onto the contact its
own account created (and nobody edited since); two accounts sharing a contact see only their
own invoices; a merge is recorded in the contact's chatter."""

from odoo.tests import new_test_user, tagged

from .common import FusionBillingApiCase, FusionBillingCase, NexacloudSourceCase, load_migration
from odoo.addons.fusion_centralize_billing.core.nexacloud_sample import sid

ADMIN_EMAIL = "root.admin@nexasystems.example"


@tagged("post_install", "-at_install")
class TestIdentityApi(FusionBillingApiCase):

    def customer(self, key=None, **values):
        response = self.api("POST", "customers", {"customer": values}, key=key)
        self.assertEqual(response.status_code, 200, response.text)
        return response.json()["customer"]

    def link(self, external_id, service=None):
        return self.env["fusion.billing.account.link"].search(
            [("service_id", "=", (service or self.service).id), ("external_id", "=", external_id)])

    def test_the_admin_email_takes_over_nothing(self):
        """The reproduction of issue 16 §1: an app posts the administrator's e-mail, then another."""
        admin = self.env.ref("base.user_admin")
        admin.partner_id.write({"email": ADMIN_EMAIL, "phone": "+1 613 555 0199", "street": "1 Admin Way",
                                "city": "Ottawa"})
        customer = self.customer(external_id="x1", email=ADMIN_EMAIL.upper())
        self.assertNotEqual(customer["name"], admin.name)
        self.assertEqual((customer["phone"], customer["address_line1"], customer["city"]), (None, None, None))
        link = self.link("x1")
        self.assertNotEqual(link.partner_id, admin.partner_id)
        self.assertFalse(link.partner_id.user_ids)

        self.customer(external_id="x1", email="me@evil.example", name="Evil")
        self.assertEqual((admin.email, admin.name), (ADMIN_EMAIL, admin.name))
        self.assertEqual(admin.partner_id.phone, "+1 613 555 0199")
        # What /web/reset_password would use: the admin's own address, still.
        self.assertEqual(self.env["res.users"].search([("email", "=ilike", "me@evil.example")]), self.env["res.users"])

    def test_protected_contacts_are_never_linked_or_written(self):
        other_company = self.env["res.company"].create({"name": "NexaSystems US"})
        employee = new_test_user(self.env, "fc_employee", groups="base.group_user", email="employee@nexa.example")
        portal = new_test_user(self.env, "fc_portal", groups="base.group_portal", email="portal@client.example")
        archived = new_test_user(self.env, "fc_archived", groups="base.group_user", email="gone@nexa.example")
        archived.active = False
        protected = {
            "an internal user's": employee.partner_id,
            "a portal user's": portal.partner_id,
            "an archived user's": archived.partner_id,
            "another company's": self.env["res.partner"].create({
                "name": "US client", "email": "us@client.example", "company_id": other_company.id,
                "customer_rank": 1}),
            "a vendor's (not a customer)": self.env["res.partner"].create({
                "name": "Supplier", "email": "sales@supplier.example", "supplier_rank": 1}),
            "a company's own": self.env.company.partner_id,
        }
        self.env.company.partner_id.email = "hello@nexasystems.example"
        for number, (what, partner) in enumerate(protected.items()):
            before = partner.read(["name", "email", "phone"])[0]
            self.customer(external_id=f"p{number}", email=partner.email)
            self.customer(external_id=f"p{number}", email=f"new{number}@evil.example", name="Renamed", phone="1")
            link = self.link(f"p{number}")
            self.assertNotEqual(link.partner_id, partner, f"linked to {what} contact")
            self.assertEqual(partner.read(["name", "email", "phone"])[0], before, f"{what} contact was written")

    def test_customer_contacts_are_shared_and_the_merge_is_in_the_chatter(self):
        desk = self._create_service("NexaDesk", "nexadesk")
        desk_key = self._api_key(desk)
        first = self.customer(key=desk_key, external_id="desk_1", email="ops@maple.example", name="Maple Leaf")
        self.customer(external_id="cloud_1", email=" OPS@Maple.Example ", name="Maple Leaf Hosting")
        desk_link, cloud_link = self.link("desk_1", desk), self.link("cloud_1")
        self.assertEqual(cloud_link.partner_id, desk_link.partner_id, "one partner per client across apps")
        self.assertEqual(first["name"], "Maple Leaf")
        merge = cloud_link.partner_id.message_ids.filtered(lambda m: "cloud_1" in (m.body or ""))
        self.assertTrue(merge, "the merge is recorded on the contact")
        self.assertIn("desk_1", merge[0].body)
        self.assertIn("NexaDesk", merge[0].body)

    def test_search_term_matches_only_what_this_app_sent(self):
        """``GET /customers?search_term=`` must not probe the shared contact's name another app gave it."""
        desk = self._create_service("NexaDesk", "nexadesk")
        self.customer(key=self._api_key(desk), external_id="desk_7", email="seven@client.example",
                      name="Secret Seven Holdings")
        self.customer(external_id="cloud_7", email="seven@client.example")
        self.assertEqual(self.link("cloud_7").partner_id, self.link("desk_7", desk).partner_id)

        def found(term, key=None):
            response = self.api("GET", "customers", params={"search_term": term}, key=key)
            self.assertEqual(response.status_code, 200, response.text)
            return [c["external_id"] for c in response.json()["customers"]]

        self.assertEqual(found("Secret Seven"), [], "another app's name for the shared contact leaks")
        self.assertEqual(found("cloud_7"), ["cloud_7"])
        self.assertEqual(found("seven@client"), ["cloud_7"])
        self.customer(external_id="cloud_7", name="Seven (cloud)")
        self.assertEqual(found("Seven (cloud)"), ["cloud_7"], "the name this app sent is searchable")

    def test_an_app_writes_only_its_own_unedited_contact(self):
        desk = self._create_service("NexaDesk", "nexadesk")
        self.customer(key=self._api_key(desk), external_id="desk_9", email="nine@client.example", name="Nine Inc.",
                      phone="+1 111")
        partner = self.link("desk_9", desk).partner_id
        # Another app's account on the same contact: its values stay on its account.
        shared = self.customer(external_id="cloud_9", email="nine@client.example", name="NINE", phone="+1 222")
        self.assertEqual((partner.name, partner.phone), ("Nine Inc.", "+1 111"))
        self.assertEqual((shared["name"], shared["phone"]), ("NINE", "+1 222"), "the app reads back what it sent")
        cloud_link = self.link("cloud_9")
        self.assertTrue(cloud_link.partner_differs)
        self.assertIn("+1 222", cloud_link.partner_differences)
        self.assertIn("+1 111", cloud_link.partner_differences)

        # Its own contact, unedited: the app keeps it up to date.
        self.customer(external_id="own_1", email="own@client.example", name="Own Ltd", phone="+1 333")
        own = self.link("own_1").partner_id
        self.customer(external_id="own_1", phone="+1 444", city="Gatineau")
        self.assertEqual((own.phone, own.city), ("+1 444", "Gatineau"))
        self.assertFalse(self.link("own_1").partner_differs)
        # A person edits it: from then on the app's values stay on its account, for review.
        own.with_user(self.env.ref("base.user_admin")).write({"phone": "+1 555 (checked by phone)"})
        answer = self.customer(external_id="own_1", phone="+1 666", email="takeover@evil.example")
        self.assertEqual((own.phone, own.email), ("+1 555 (checked by phone)", "own@client.example"))
        self.assertEqual((answer["phone"], answer["email"]), ("+1 666", "takeover@evil.example"))
        self.assertTrue(self.link("own_1").partner_differs)

    def test_invoices_of_a_shared_contact_are_listed_per_account(self):
        """Two accounts with one e-mail share a contact; each lists only its own subscriptions' invoices."""
        self.service.billing_mode = "live"
        invoices = {}
        for account in ("acc_a", "acc_b"):
            self.customer(external_id=account, email="family@client.example")
            response = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": account, "plan_code": "pro", "external_id": f"sub_{account}"}})
            order = self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))
            invoices[account] = order._create_invoices()
            invoices[account].action_post()
        self.assertEqual(self.link("acc_a").partner_id, self.link("acc_b").partner_id)
        for account, other in (("acc_a", "acc_b"), ("acc_b", "acc_a")):
            by_customer = self.api("GET", f"customers/{account}/invoices").json()["invoices"]
            by_filter = self.api("GET", "invoices", params={"external_customer_id": account}).json()["invoices"]
            for listed in (by_customer, by_filter):
                self.assertEqual([i["lago_id"] for i in listed], [str(invoices[account].id)], account)
                self.assertEqual(listed[0]["external_customer_id"], account)
            found = self.api("GET", f"invoices/{invoices[other].id}").json()["invoice"]
            self.assertEqual(found["customer"]["external_id"], other)
        self.assertEqual(len(self.api("GET", "invoices").json()["invoices"]), 2)

    def test_an_apps_account_email_never_steers_another_apps_customers(self):
        """The e-mail an app gave its account (the app's word, kept on the account when the app may
        not write the contact) links no other app's new customer: only a contact's own e-mail does."""
        alice = self.env["res.partner"].create({"name": "Alice Martin", "email": "alice@client.example",
                                                "customer_rank": 1})
        self.customer(external_id="steer_a", email="alice@client.example")
        self.assertEqual(self.link("steer_a").partner_id, alice)
        # App A now calls its customer Bob: kept on its account (Alice's contact is not A's to write).
        self.customer(external_id="steer_a", email="bob@client.example")
        self.assertEqual((self.link("steer_a").email, alice.email), ("bob@client.example", "alice@client.example"))
        desk = self._create_service("NexaDesk", "nexadesk")
        desk_key = self._api_key(desk)
        self.customer(key=desk_key, external_id="desk_bob", email="bob@client.example", name="Bob Stone")
        bob = self.link("desk_bob", desk)
        self.assertNotEqual(bob.partner_id, alice, "app A steered app B's new customer onto Alice")
        self.assertEqual(bob.partner_id.email, "bob@client.example")
        # A contact's own e-mail still shares it across apps (one contact per client).
        self.customer(key=desk_key, external_id="desk_alice", email="ALICE@client.example")
        self.assertEqual(self.link("desk_alice", desk).partner_id, alice)

    def test_invoicing_the_orders_of_accounts_sharing_a_contact_at_once_bills_each_account_apart(self):
        """*Create Invoice* on several orders groups them by contact: never two app accounts on one
        invoice (it would belong to neither, and neither app could list it)."""
        self.service.billing_mode = "live"
        orders = self.env["sale.order"]
        for account in ("acc_c", "acc_d"):
            self.customer(external_id=account, email="shared@client.example")
            response = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": account, "plan_code": "pro", "external_id": f"sub_{account}"}})
            orders |= self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))
        self.assertEqual(len(orders.partner_id), 1)
        invoices = orders._create_invoices()
        self.assertEqual(len(invoices), 2)
        self.assertEqual(set(invoices.mapped("x_fc_account_link_id")), set(orders.mapped("x_fc_account_link_id")))
        for invoice in invoices:
            self.assertEqual(invoice.invoice_line_ids.sale_line_ids.order_id.x_fc_account_link_id,
                             invoice.x_fc_account_link_id)


@tagged("post_install", "-at_install")
class TestIdentityImport(NexacloudSourceCase):
    """The NexaCloud importer matches contacts by the same rules as the API."""

    def test_import_never_links_or_renames_a_user_or_an_edited_contact(self):
        employee = new_test_user(self.env, "fc_alice_employee", groups="base.group_user", name="Alice (staff)",
                                 email="alice@example.com")  # the e-mail of NexaCloud user 1
        self.run_import()
        links = self.env["fusion.billing.account.link"].search([("service_id", "=", self.service.id)])
        alice = links.filtered(lambda l: l.external_id == sid("u", 1))
        self.assertNotEqual(alice.partner_id, employee.partner_id)
        self.assertEqual(employee.partner_id.name, "Alice (staff)")
        bob = links.filtered(lambda l: l.external_id in (sid("u", 2), sid("u", 3)))
        self.assertEqual(len(bob.partner_id), 1, "one contact per client")
        self.assertTrue(bob.partner_id.message_ids.filtered(lambda m: sid("u", 3) in (m.body or "")),
                        "the merge of two accounts is recorded on the contact")

        # A person corrects Bob's contact; the source renames him: the import keeps the person's edit.
        bob.partner_id.with_user(self.env.ref("base.user_admin")).write({"name": "Bob's Bakery (checked)"})
        self.admin_sql(f"""UPDATE users SET company_name = 'Bob Renamed Ltd.' WHERE id = '{sid("u", 2)}';
                           UPDATE users SET full_name = 'Alice M.' WHERE id = '{sid("u", 1)}'""")
        self.run_import()
        self.assertEqual(bob.partner_id.name, "Bob's Bakery (checked)")
        self.assertEqual(employee.partner_id.name, "Alice (staff)")
        self.assertEqual(alice.partner_id.name, "Alice M.", "its own unedited contact follows the source")
        owner = bob.filtered(lambda l: l.external_id == sid("u", 2))
        self.assertTrue(owner.partner_differs)
        self.assertIn("Bob Renamed Ltd.", owner.partner_differences)


@tagged("post_install", "-at_install")
class TestIdentityMigration(FusionBillingCase):
    """Accounts made before 19.0.1.1.0 did not record whether they created their contact."""

    def migration(self):
        return load_migration("19.0.1.1.0", "fc_post_migrate_1_1")

    def old_link(self, external_id, email, partner=None):
        """An account as the former code made it: its contact created with it, by the superuser."""
        partner = partner or self.env["res.partner"].create({"name": external_id, "email": email})
        link = self.env["fusion.billing.account.link"].create(
            {"service_id": self.service.id, "external_id": external_id, "partner_id": partner.id, "email": email})
        self.env.cr.execute("UPDATE fusion_billing_account_link SET partner_created = NULL, partner_synced = NULL "
                            "WHERE id = %s", [link.id])
        link.invalidate_recordset()
        return link

    def test_accounts_that_made_their_contact_may_write_it_again(self):
        own = self.old_link("old_1", "one@client.example")
        edited = self.old_link("old_2", "two@client.example")
        edited.partner_id.with_user(self.env.ref("base.user_admin")).write({"phone": "+1 613 555 0100"})  # a person edited it
        shared = self.old_link("old_3", "three@client.example")
        self.env["fusion.billing.account.link"].create({
            "service_id": self._create_service("NexaDesk", "nexadesk").id, "external_id": "desk_3",
            "partner_id": shared.partner_id.id})
        user_contact = new_test_user(self.env, "fc_old_user", groups="base.group_user").partner_id
        with_user = self.old_link("old_4", "four@client.example", partner=user_contact)

        marked = self.migration().mark_contacts_created_by_their_account(self.env)

        self.assertEqual(marked, own)
        self.assertTrue(own.partner_created)
        self.assertEqual(own.partner_synced["email"], "one@client.example")
        for link in (edited, shared, with_user):
            self.assertFalse(link.partner_created, link.external_id)
