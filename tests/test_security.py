from datetime import datetime, timezone
from unittest.mock import patch

from odoo import Command, fields
from odoo.exceptions import AccessError
from odoo.tests import Form, new_test_user, tagged
from odoo.tools import mute_logger

from .common import FusionBillingCase


@tagged("post_install", "-at_install")
class TestSecurity(FusionBillingCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.service.sudo().webhook_secret = "s3cret"
        action = cls.service.with_user(cls.billing_admin).action_generate_api_key()
        cls.plaintext = action["context"]["default_key"]

    def test_billing_user_cannot_read_key_hash_or_webhook_secret(self):
        key = self.service.api_key_ids.with_user(self.billing_user)
        self.assertTrue(key.prefix)
        with self.assertRaises(AccessError):
            key.read(["key_hash"])
        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).read(["webhook_secret"])
        self.assertNotIn("key_hash", key.fields_get())

    def test_billing_user_cannot_change_services_or_keys(self):
        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).write({"billing_mode": "live"})
        with self.assertRaises(AccessError):
            self.service.with_user(self.billing_user).action_generate_api_key()
        with self.assertRaises(AccessError):
            self.service.api_key_ids.with_user(self.billing_user).action_revoke()
        with self.assertRaises(AccessError):
            self.env["fusion.billing.charge"].with_user(self.billing_user).create({
                "service_id": self.service.id, "metric_id": self.metric_bandwidth.id, "plan_code": "x",
            })

    def test_billing_user_operates_usage_and_customers(self):
        link = self.env["fusion.billing.account.link"].with_user(self.billing_user).create({
            "service_id": self.service.id, "external_id": "acct_9", "partner_id": self.partner.id,
        })
        self.assertTrue(link.exists())
        self.assertTrue(self.env["fusion.billing.usage"].with_user(self.billing_user).check_access("read") is None)

    def test_administrator_configures(self):
        self.env["ir.config_parameter"].set_param("fusion_billing.webhook_allow_loopback", "1")  # tests only
        self.service.with_user(self.billing_admin).write({"billing_mode": "live", "webhook_url": "http://127.0.0.1:1/"})
        self.assertEqual(self.service.with_user(self.billing_admin).webhook_secret, "s3cret")
        self.assertEqual(self.service.billing_mode, "live")

    def test_plain_employee_sees_nothing(self):
        for model in ("fusion.billing.service", "fusion.billing.api.key", "fusion.billing.usage",
                      "fusion.billing.event", "fusion.billing.webhook", "fusion.billing.reconciliation"):
            with self.assertRaises(AccessError, msg=model):
                self.env[model].with_user(self.plain_user).search([])

    def test_services_are_isolated_by_company(self):
        other_company = self.env["res.company"].create({"name": "NexaSystems US", "currency_id": self.env.ref("base.USD").id})
        other = self.env["fusion.billing.service"].create({
            "name": "US Cloud", "code": "uscloud", "company_id": other_company.id})
        visible = self.env["fusion.billing.service"].with_user(self.billing_admin).search([])
        self.assertIn(self.service, visible)
        self.assertNotIn(other, visible)


@tagged("post_install", "-at_install")
class TestServiceRecordAccess(FusionBillingCase):
    """Issue 16 §6: buttons on a service check access to that service, not only the group."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.other_company = cls.env["res.company"].create({"name": "NexaSystems US"})
        cls.other_service = cls._create_service("US Maps", "usmaps", company_id=cls.other_company.id)
        # An administrator of Fusion Billing in this company only.
        cls.admin_here = new_test_user(
            cls.env, "fc_admin_here", groups="fusion_centralize_billing.group_fusion_billing_manager",
            company_id=cls.env.company.id, company_ids=[Command.set(cls.env.company.ids)])

    def assertRefusedBeforeAnyWrite(self, call, msg=None):
        """``call`` raises an AccessError; no savepoint undoes what it did before (as when a caller
        catches the error), so the checks that follow see any write made before the refusal."""
        try:
            with mute_logger("odoo.models"):
                call()
        except AccessError:
            return
        self.fail(f"{msg or call} was not refused")

    def test_api_key_of_another_company_service_is_refused(self):
        self.assertRefusedBeforeAnyWrite(self.other_service.with_user(self.admin_here).action_generate_api_key)
        self.assertFalse(self.env["fusion.billing.api.key"].with_context(active_test=False).search(
            [("service_id", "=", self.other_service.id)]))

    def test_billing_mode_of_another_company_service_is_refused(self):
        wizard = self.env["fusion.billing.cutover.wizard"].with_user(self.admin_here).create(
            {"service_id": self.other_service.id, "acknowledged": True})
        self.assertRefusedBeforeAnyWrite(wizard.action_confirm)
        self.assertEqual(self.other_service.billing_mode, "shadow")
        self.other_service.billing_mode = "live"
        service = self.other_service.with_user(self.admin_here)
        for action in ("action_switch_to_shadow", "action_activate_subscriptions", "action_switch_to_live"):
            self.assertRefusedBeforeAnyWrite(getattr(service, action), action)
        self.assertEqual(self.other_service.billing_mode, "live")


@tagged("post_install", "-at_install")
class TestNativeUsers(FusionBillingCase):
    """Issue 16 §5: accountants and salespeople work on an app's invoices and subscriptions
    without any Fusion Billing group; what the addon does on their behalf is done by code."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.accountant = new_test_user(cls.env, "fc_accountant", groups="account.group_account_user")
        cls.salesperson = new_test_user(cls.env, "fc_salesperson", groups="sales_team.group_sale_salesman")
        cls.link, cls.order = cls._confirmed_app_subscription(
            "cus_native", "native@client.example", "Native Ltd", "sub_native", user_id=cls.salesperson.id)

    def test_accountant_posts_and_reverses_an_app_invoice(self):
        invoice = self.order._create_invoices()
        invoice.with_user(self.accountant).action_post()
        self.assertEqual(invoice.state, "posted")
        credit_note = invoice.with_user(self.accountant)._reverse_moves(cancel=True)
        self.assertEqual((credit_note.state, invoice.payment_state), ("posted", "reversed"))
        queued = self.env["fusion.billing.webhook"].search([("service_id", "=", self.service.id)])
        self.assertEqual(queued.filtered(lambda w: w.event_type == "invoice.created").mapped("object_ref"),
                         [f"account.move,{credit_note.id}", f"account.move,{invoice.id}"])
        self.assertFalse(self.accountant.has_group("fusion_centralize_billing.group_fusion_billing_user"))

    def test_salesperson_opens_an_app_subscription_with_its_current_usage(self):
        with patch("odoo.fields.Datetime.now", return_value=fields.Datetime.to_datetime("2026-11-20 10:00:00")):
            self.env["fusion.billing.event"]._ingest(self.service, [{
                "transaction_id": "native_1", "fingerprint": "native_1", "external_subscription_id": "sub_native",
                "code": "bandwidth_gb", "properties": {"gb": 130}, "precise_total_amount_cents": None,
                "timestamp": datetime(2026, 11, 5, tzinfo=timezone.utc)}])
            form = Form(self.order.with_user(self.salesperson))
            panel = form.x_fc_current_usage_html
        self.assertIn("Bandwidth", panel)
        self.assertIn("1.50", panel)  # 30 GB over the 100 included, at 0.05
        self.assertFalse(self.salesperson.has_group("fusion_centralize_billing.group_fusion_billing_user"))
