from odoo.exceptions import AccessError
from odoo.tests import tagged

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
