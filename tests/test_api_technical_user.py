"""The API never runs as superuser: every call runs as its service's technical user, and record
rules (not only each handler's filter) keep it to its own service and company (issue 16 §2)."""
from unittest.mock import patch

from odoo.http import request
from odoo.tests import tagged

from ..controllers.api import BillingApi
from ..core import keys
from .common import FusionBillingApiCase

MODELS = {
    # model: field naming the service of a record
    "fusion.billing.service": "id",
    "fusion.billing.api.key": "service_id",
    "fusion.billing.account.link": "service_id",
    "fusion.billing.metric": "service_id",
    "fusion.billing.charge": "service_id",
    "fusion.billing.usage": "service_id",
    "fusion.billing.event": "service_id",
    "fusion.billing.webhook": "service_id",
    "fusion.billing.reconciliation": "service_id",
    "sale.order": "x_fc_service_id",
    "sale.subscription.plan": "x_fc_service_id",
    "account.move": "x_fc_service_id",
}


def forgetful_handler(_self, _service):
    """A handler that forgets the service filter: what can it reach?"""
    env = request.env
    return {
        "uid": env.uid, "su": env.su,
        "records": {model: sorted(set(env[model].with_context(active_test=False).search([]).mapped(
            lambda record, field=field: record.id if field == "id" else record[field].id)))
            for model, field in MODELS.items()},
    }


@tagged("post_install", "-at_install")
class TestApiTechnicalUser(FusionBillingApiCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.other = cls._create_service("NexaDesk", "nexadesk")
        cls._api_key(cls.other)
        metric = cls.env["fusion.billing.metric"].create({
            "service_id": cls.other.id, "name": "Chats", "code": "chats", "aggregation": "count"})
        plan = cls.env["sale.subscription.plan"].create({
            "name": "Desk", "billing_period_value": 1, "billing_period_unit": "month", "x_fc_service_id": cls.other.id,
            "x_fc_plan_code": "desk", "x_fc_amount": 9.0, "x_fc_currency_id": cls.cad.id,
            "x_fc_product_id": cls.base_product.id})
        cls.env["fusion.billing.charge"].create({
            "service_id": cls.other.id, "plan_id": plan.id, "plan_code": "desk", "metric_id": metric.id,
            "charge_model": "standard", "properties": {"amount": "0.01"}})
        link = cls.env["fusion.billing.account.link"].create({
            "service_id": cls.other.id, "external_id": "desk_cus", "partner_id": cls.partner.id})
        order = cls._create_subscription(plan=plan, external_id="desk_sub", service=cls.other,
                                         x_fc_account_link_id=link.id, start_date="2026-11-01")
        cls.env["fusion.billing.usage"].create({
            "subscription_id": order.id, "metric_id": metric.id, "period_start": "2026-11-01",
            "period_end": "2026-12-01", "quantity": 3})
        cls.env["fusion.billing.event"].create({
            "service_id": cls.other.id, "transaction_id": "desk_tx", "external_subscription_id": "desk_sub",
            "code": "chats", "timestamp": "2026-11-02 10:00:00", "fingerprint": "x", "subscription_id": order.id,
            "metric_id": metric.id})
        cls.env["fusion.billing.webhook"]._enqueue(cls.other, "customer.created", link)
        cls.env["fusion.billing.reconciliation"].create({
            "service_id": cls.other.id, "period_start": "2026-10-01", "period_end": "2026-11-01",
            "external_subscription_id": "desk_sub", "currency_id": cls.cad.id, "state": "match"})
        cls.env["account.move"].create({
            "move_type": "out_invoice", "partner_id": cls.partner.id, "x_fc_service_id": cls.other.id,
            "invoice_line_ids": [(0, 0, {"name": "Desk", "quantity": 1, "price_unit": 9.0})]})

    def test_a_handler_that_forgets_the_service_filter_reaches_nothing_of_another_service(self):
        # this service has records of every kind too
        self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "cloud_cus", "plan_code": "pro", "external_id": "cloud_sub"}})
        with patch.object(BillingApi, "customer_list", forgetful_handler):
            seen = self.api("GET", "customers").json()
        leaks = [model for model, services in seen["records"].items() if self.other.id in services]
        self.assertFalse(leaks, "another service's records are reachable")
        self.assertFalse(seen["su"], "never as superuser")
        user = self.service.api_user_id
        self.assertTrue(user, "every service has its technical user")
        self.assertEqual(seen["uid"], user.id)
        self.assertEqual(seen["records"]["fusion.billing.service"], [self.service.id])
        self.assertEqual(seen["records"]["sale.order"], [self.service.id])
        self.assertEqual(seen["records"]["fusion.billing.account.link"], [self.service.id])

    def test_the_technical_user_is_least_privileged(self):
        user = self.service.api_user_id
        self.assertFalse(user.active, "cannot log in and takes no seat")
        self.assertFalse(user._is_superuser() or user._is_admin())
        self.assertFalse(user.has_group("fusion_centralize_billing.group_fusion_billing_manager"))
        self.assertEqual(user.company_ids, self.service.company_id)
        self.assertNotEqual(user, self.other.api_user_id, "one per service")
        # the same rules hold for ORM access as that user (not only through the API)
        as_api = self.env["sale.order"].with_user(user)
        self.assertFalse(as_api.search([("x_fc_service_id", "=", self.other.id)]))
        self.assertFalse(self.env["fusion.billing.service"].with_user(user).search([("id", "=", self.other.id)]))

    def test_a_service_in_another_company_gets_a_user_of_that_company(self):
        company = self.env["res.company"].create({"name": "NexaSystems US", "currency_id": self.env.ref("base.USD").id})
        self.billing_admin.company_ids |= company
        service = self._create_service("US Cloud", "uscloud", company_id=company.id)
        self.assertFalse(service.api_user_id, "created with the first key")
        key = self._api_key(service)
        self.assertEqual(service.api_user_id.company_id, company)
        self.assertEqual(service.api_user_id.company_ids, company)
        response = self.api("GET", "customers", key=key)
        self.assertEqual(response.status_code, 200, response.text)

    def test_a_key_made_before_api_users_existed_gets_one_at_first_call(self):
        service = self._create_service("NexaMaps", "nexamaps")
        plaintext, prefix, key_hash = keys.generate_key()
        self.env["fusion.billing.api.key"].create({"service_id": service.id, "prefix": prefix, "key_hash": key_hash})
        self.assertFalse(service.api_user_id)
        response = self.api("GET", "customers", key=plaintext)
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(service.api_user_id.x_fc_api_service_id, service)
