"""The served OpenAPI document describes exactly the routes that exist, and real responses match it."""
import copy
import re

import jsonschema

from odoo.tests import tagged

from ..controllers.api import ROUTER
from .common import FusionBillingApiCase


def json_schema(schema, components):
    """OpenAPI 3.0 schema → JSON Schema: resolve $ref, turn ``nullable`` into a null type."""
    if isinstance(schema, list):
        return [json_schema(item, components) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return json_schema(components[schema["$ref"].rsplit("/", 1)[1]], components)
    schema = {key: json_schema(value, components) for key, value in copy.deepcopy(schema).items()}
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    return schema


@tagged("post_install", "-at_install")
class TestOpenApi(FusionBillingApiCase):

    def setUp(self):
        super().setUp()
        response = self.url_open(f"{self.API}/openapi.json")  # public
        self.assertEqual(response.status_code, 200)
        self.document = response.json()

    def operation(self, method, path):
        for template, operations in self.document["paths"].items():
            if re.fullmatch(re.sub(r"\{[^}]+\}", "[^/]+", template), "/" + path) and method.lower() in operations:
                return operations[method.lower()]
        self.fail(f"{method} /{path} is not in the OpenAPI document")

    def assert_conforms(self, method, path, body=None, params=None, key=None):
        response = self.api(method, path, body, params=params, key=key)
        operation = self.operation(method, path)
        documented = operation["responses"].get(str(response.status_code))
        self.assertTrue(documented, f"{method} /{path} answered {response.status_code}, which is not documented")
        schema = json_schema(documented["content"]["application/json"]["schema"],
                             self.document["components"]["schemas"])
        jsonschema.validate(response.json(), schema)
        return response

    def test_every_route_is_documented_and_every_documented_route_exists(self):
        routes = {(verb.lower(), "/" + re.sub(r"<(\w+)>", r"{\1}", path)) for verb, path, _h in ROUTER.table}
        documented = {(method, path) for path, operations in self.document["paths"].items() for method in operations}
        self.assertEqual(documented, routes)
        self.assertTrue(self.document["openapi"].startswith("3."))

    def test_real_responses_match_the_document(self):
        self.assert_conforms("GET", "health")
        self.assert_conforms("POST", "customers", {"customer": {"external_id": "cus_oa", "name": "Open API Ltd.",
                                                                "email": "oa@example.com"}})
        self.assert_conforms("GET", "customers/cus_oa")
        self.assert_conforms("GET", "customers", params={"per_page": 1})
        self.assert_conforms("POST", "subscriptions", {"subscription": {
            "external_customer_id": "cus_oa", "plan_code": "pro", "external_id": "sub_oa"}})
        self.assert_conforms("GET", "subscriptions/sub_oa")
        self.assert_conforms("GET", "subscriptions")
        self.assert_conforms("POST", "events", {"event": {"transaction_id": "tx_oa", "external_subscription_id": "sub_oa",
                                                          "code": "bandwidth_gb", "properties": {"gb": 3}}})
        self.assert_conforms("POST", "events/batch", {"events": [{
            "transaction_id": "tx_oa2", "external_subscription_id": "sub_oa", "code": "bandwidth_gb",
            "properties": {"gb": 2}}]})
        self.assert_conforms("GET", "events/tx_oa")
        self.assert_conforms("GET", "events", params={"status": "unbillable"})
        self.assert_conforms("GET", "customers/cus_oa/current_usage", params={"external_subscription_id": "sub_oa"})
        self.assert_conforms("GET", "customers/cus_oa/past_usage", params={"external_subscription_id": "sub_oa"})
        self.assert_conforms("GET", "customers/cus_oa/invoices")
        self.assert_conforms("GET", "plans")
        self.assert_conforms("GET", "plans/pro")
        self.assert_conforms("GET", "billable_metrics")
        self.assert_conforms("GET", "billable_metrics/bandwidth_gb")
        self.assert_conforms("GET", "invoices")
        self.assert_conforms("POST", "reconciliation/app_bills", {"app_bills": [{
            "external_subscription_id": "sub_oa", "period_start": "2026-10-01", "period_end": "2026-11-01",
            "base_fee_cents": 4900}]})
        self.assert_conforms("DELETE", "subscriptions/sub_oa")
        self.assert_conforms("DELETE", "customers/cus_oa")

    def test_error_responses_match_the_document(self):
        self.assertEqual(self.assert_conforms("GET", "customers/nobody").status_code, 404)
        self.assertEqual(self.assert_conforms("GET", "customers", key="not-a-key").status_code, 401)
        self.assertEqual(self.assert_conforms("POST", "customers", {"customer": {"external_id": ""}}).status_code, 422)
        self.assertEqual(self.assert_conforms("POST", "events", {"event": {"code": "x"}}).status_code, 422)
        self.assertEqual(self.assert_conforms("GET", "invoices/999999").status_code, 404)
        self.assertEqual(self.assert_conforms("GET", "customers", params={"page": "zero"}).status_code, 422)
