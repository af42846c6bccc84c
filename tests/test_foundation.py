from psycopg2 import IntegrityError

from odoo.exceptions import ValidationError
from odoo.tests import tagged
from odoo.tools import mute_logger
from odoo.tools.safe_eval import safe_eval

from ..core import keys
from .common import FusionBillingCase


@tagged("post_install", "-at_install")
class TestFoundation(FusionBillingCase):

    def test_every_menu_opens_for_a_billing_user(self):
        """Each Fusion Billing menu has an action whose views load for a plain billing user."""
        root = self.env.ref("fusion_centralize_billing.menu_fusion_billing_root")
        menus = self.env["ir.ui.menu"].with_user(self.billing_user).search([("id", "child_of", root.id)])
        actions = [menu.action for menu in menus.sudo() if menu.action]
        self.assertGreaterEqual(len(actions), 10)
        for action in actions:
            model = self.env[action.res_model].with_user(self.billing_user)
            views = [(view.id, view.view_mode) for view in action.view_ids] or \
                    [(False, mode) for mode in action.view_mode.split(",")]
            model.get_views(views + [(False, "search")])
            model.search_fetch(safe_eval(action.domain or "[]"), ["display_name"], limit=1)

    def test_service_defaults_to_cad_and_shadow(self):
        service = self._create_service("NexaMaps", "nexamaps")
        self.assertEqual(service.currency_id, self.cad)
        self.assertEqual(service.billing_mode, "shadow")
        self.assertTrue(service._is_shadow())
        self.assertEqual(len(service.organization_id), 32)

    @mute_logger("odoo.sql_db")
    def test_service_code_unique_per_company(self):
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            self._create_service("Another cloud", "nexacloud")

    @mute_logger("odoo.sql_db")
    def test_account_link_unique_per_service(self):
        link_model = self.env["fusion.billing.account.link"]
        link_model.create({"service_id": self.service.id, "external_id": "cus_1", "partner_id": self.partner.id})
        desk = self._create_service("NexaDesk", "nexadesk")
        # Same external id in another app is another account, possibly the same client.
        link_model.create({"service_id": desk.id, "external_id": "cus_1", "partner_id": self.partner.id})
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            link_model.create({"service_id": self.service.id, "external_id": "cus_1", "partner_id": self.partner.id})

    def test_partner_found_by_normalised_email_across_apps(self):
        self.env["fusion.billing.account.link"].create({
            "service_id": self.service.id, "external_id": "u1", "partner_id": self.partner.id,
            "email": "  OPS@MapleLeaf.ca ",
        })
        found = self.env["fusion.billing.account.link"]._fc_find_partners(
            ["ops@mapleleaf.CA  ", "nobody@example.com"], self.service.company_id)
        self.assertEqual(found, {"ops@mapleleaf.ca": self.partner})

    @mute_logger("odoo.sql_db")
    def test_metric_code_unique_per_service_and_property_required(self):
        metric_model = self.env["fusion.billing.metric"]
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            metric_model.create({"service_id": self.service.id, "name": "Dup", "code": "bandwidth_gb"})
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            metric_model.create({"service_id": self.service.id, "name": "Disk", "code": "disk", "aggregation": "max"})

    def test_charge_pricing_is_validated(self):
        with self.assertRaises(ValidationError):
            self.charge.properties = {"amount": "not a number"}
        self.charge.properties_text = '{"amount": "0.10"}'
        self.assertEqual(self.charge.properties, {"amount": "0.10"})
        with self.assertRaises(ValidationError):
            self.charge.properties_text = "{not json"

    def test_usage_is_never_billed_by_a_recurring_product(self):
        """A recurring (subscription) product on a usage line would be billed again every period by Odoo's
        recurring run: a charge's product never is one, nor becomes one while a charge uses it."""
        usage = self.env["product.product"].create({"name": "Bandwidth overage", "type": "service"})
        self.charge.product_id = usage
        with self.assertRaises(ValidationError) as caught:  # (Odoo's: rolled back to a savepoint)
            self.charge.product_id = self.base_product
        self.assertIn("is a recurring (subscription) product", str(caught.exception))
        with self.assertRaises(ValidationError) as caught:
            usage.recurring_invoice = True
        self.assertIn("Bandwidth overage bill usage", str(caught.exception))
        with self.assertRaises(ValidationError) as caught:
            self.env.ref("fusion_centralize_billing.product_metered_usage").recurring_invoice = True
        self.assertIn("Metered usage bill usage", str(caught.exception))
        self.assertEqual(self.charge.product_id, usage)
        self.charge.product_id = False  # the metered usage product; the former one is free again
        usage.recurring_invoice = True
        self.assertTrue(usage.recurring_invoice)

    @mute_logger("odoo.sql_db")
    def test_one_active_charge_per_plan_and_metric(self):
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            self.env["fusion.billing.charge"].create({
                "service_id": self.service.id, "plan_id": self.plan.id, "plan_code": "pro",
                "metric_id": self.metric_bandwidth.id, "properties": {"amount": "1"},
            })

    def test_charge_without_plan_is_allowed(self):
        charge = self.env["fusion.billing.charge"].create({
            "service_id": self.service.id, "plan_code": "legacy", "metric_id": self.metric_bandwidth.id,
            "properties": {"amount": "1"},
        })
        self.assertFalse(charge.plan_id)

    @mute_logger("odoo.sql_db")
    def test_usage_is_one_row_per_subscription_metric_period(self):
        subscription = self._create_subscription()
        values = {"subscription_id": subscription.id, "metric_id": self.metric_bandwidth.id,
                  "period_start": "2026-11-01", "period_end": "2026-12-01", "quantity": 10}
        usage = self.env["fusion.billing.usage"].create(values)
        self.assertEqual(usage.service_id, self.service)
        self.assertEqual(usage.partner_id, self.partner)
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            self.env["fusion.billing.usage"].create(values)
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            self.env["fusion.billing.usage"].create(dict(values, period_start="2026-12-01"))

    @mute_logger("odoo.sql_db")
    def test_live_subscription_external_id_unique_per_service(self):
        first = self._create_subscription(external_id="sub_x")
        with self.assertRaises(IntegrityError), self.env.cr.savepoint():
            self._create_subscription(external_id="sub_x")
        # Once terminated, the external id can be reused (as in Lago).
        first.x_fc_terminated_at = "2026-11-01 00:00:00"
        first.flush_recordset()
        self.assertTrue(self._create_subscription(external_id="sub_x"))

    def test_subscription_is_native(self):
        subscription = self._create_subscription()
        self.assertTrue(subscription.is_subscription)
        self.assertEqual(subscription.plan_id.x_fc_plan_code, "pro")
        self.assertEqual(subscription.amount_untaxed, 49.0)


@tagged("post_install", "-at_install")
class TestApiKeys(FusionBillingCase):

    def _generate(self, service=None):
        action = (service or self.service).with_user(self.billing_admin).action_generate_api_key()
        return action["context"]["default_key"]

    def test_key_is_shown_once_and_stored_as_hash(self):
        plaintext = self._generate()
        key = self.service.api_key_ids
        self.assertEqual(len(key), 1)
        self.assertEqual(keys.split_key(plaintext), key.prefix)
        self.assertEqual(key.key_hash, keys.hash_key(plaintext))
        self.assertNotIn(plaintext, str(key.read()[0]))
        self.env.cr.execute("SELECT count(*) FROM fusion_billing_api_key WHERE key_hash = %s OR prefix = %s",
                            (plaintext, plaintext))
        self.assertEqual(self.env.cr.fetchone()[0], 0)

    def test_key_authenticates_its_service_and_records_use(self):
        plaintext = self._generate()
        self.assertEqual(self.env["fusion.billing.service"]._authenticate(plaintext), self.service)
        self.assertTrue(self.service.api_key_ids.last_used_date)

    def test_wrong_or_malformed_key_fails(self):
        plaintext = self._generate()
        service_model = self.env["fusion.billing.service"]
        self.assertFalse(service_model._authenticate(plaintext[:-2] + "zz"))
        self.assertFalse(service_model._authenticate("not-a-key"))
        self.assertFalse(service_model._authenticate(""))

    def test_revoked_key_fails_at_once(self):
        plaintext = self._generate()
        self.service.api_key_ids.with_user(self.billing_admin).action_revoke()
        self.assertFalse(self.env["fusion.billing.service"]._authenticate(plaintext))

    def test_rotation_replaces_the_key(self):
        old = self._generate()
        key = self.service.api_key_ids
        new = key.with_user(self.billing_admin).action_rotate()["context"]["default_key"]
        self.assertFalse(self.env["fusion.billing.service"]._authenticate(old))
        self.assertEqual(self.env["fusion.billing.service"]._authenticate(new), self.service)

    def test_archived_service_keys_fail(self):
        plaintext = self._generate()
        self.service.active = False
        self.assertFalse(self.env["fusion.billing.service"]._authenticate(plaintext))
