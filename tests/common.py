import json
from contextlib import contextmanager

from odoo import Command
from odoo.tests import HttpCase, TransactionCase, new_test_user


class FusionBillingFixtures:
    """Shared fixtures: a CAD service with a metric, a catalog plan with a usage charge,
    and users of each Fusion Billing group."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.cad = cls.env.ref("base.CAD")
        cls.billing_user = new_test_user(
            cls.env, "fc_billing_user", groups="fusion_centralize_billing.group_fusion_billing_user")
        cls.billing_admin = new_test_user(
            cls.env, "fc_billing_admin", groups="fusion_centralize_billing.group_fusion_billing_manager")
        cls.plain_user = new_test_user(cls.env, "fc_plain_user", groups="base.group_user")
        cls.service = cls._create_service("NexaCloud", "nexacloud")
        cls.metric_bandwidth = cls.env["fusion.billing.metric"].create({
            "service_id": cls.service.id, "name": "Bandwidth", "code": "bandwidth_gb",
            "aggregation": "sum", "field_name": "gb",
        })
        cls.base_product = cls.env["product.product"].create({
            "name": "NexaCloud Pro", "type": "service", "list_price": 49.0, "recurring_invoice": True,
        })
        cls.plan = cls.env["sale.subscription.plan"].create({
            "name": "NexaCloud Pro (monthly)", "billing_period_value": 1, "billing_period_unit": "month",
            "x_fc_service_id": cls.service.id, "x_fc_plan_code": "pro", "x_fc_amount": 49.0,
            "x_fc_currency_id": cls.cad.id, "x_fc_product_id": cls.base_product.id,
        })
        cls.charge = cls.env["fusion.billing.charge"].create({
            "service_id": cls.service.id, "plan_id": cls.plan.id, "plan_code": "pro",
            "metric_id": cls.metric_bandwidth.id, "included_quantity": 100,
            "charge_model": "standard", "properties": {"amount": "0.05"},
        })
        cls.partner = cls.env["res.partner"].create({"name": "Maple Leaf Hosting Inc.", "email": "ops@mapleleaf.ca"})

    @classmethod
    def _create_service(cls, name, code, **values):
        return cls.env["fusion.billing.service"].create({"name": name, "code": code, "currency_id": cls.cad.id, **values})

    @classmethod
    def _create_subscription(cls, partner=None, plan=None, external_id="sub_1", service=None, **values):
        plan = plan or cls.plan
        return cls.env["sale.order"].create({
            "partner_id": (partner or cls.partner).id,
            "pricelist_id": (service or cls.service)._fc_pricelist().id,
            "plan_id": plan.id,
            "x_fc_service_id": (service or cls.service).id,
            "x_fc_external_id": external_id,
            "order_line": [Command.create({"product_id": plan.x_fc_product_id.id, "price_unit": plan.x_fc_amount})],
            **values,
        })

    @classmethod
    def _api_key(cls, service):
        return service.with_user(cls.billing_admin).action_generate_api_key()["context"]["default_key"]


class FusionBillingCase(FusionBillingFixtures, TransactionCase):
    """ORM-level tests."""


class FusionBillingApiCase(FusionBillingFixtures, HttpCase):
    """HTTP tests of the Lago-compatible API, authenticated with a fresh key of ``service``."""

    API = "/api/billing/v1"
    API_PY = "/api/billing/api/v1"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.plaintext = cls._api_key(cls.service)
        cls.auth = {"Authorization": f"Bearer {cls.plaintext}"}

    @contextmanager
    def outside_client(self):
        """Let clients other than url_open (official Lago client, threads) reach the test server."""
        self.env.flush_all()
        with self.allow_requests(all_requests=True):
            yield
        self.env.invalidate_all()

    def api(self, method, path, body=None, params=None, key=None):
        headers = {"Authorization": f"Bearer {key or self.plaintext}"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        response = self.url_open(f"{self.API}/{path}", data=data, headers=headers, params=params,
                                 method=method, timeout=30)
        self.env.invalidate_all()
        return response
