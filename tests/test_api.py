import json
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from decimal import Decimal

import requests

from odoo.tests import tagged
from odoo.tools import mute_logger

from .common import FusionBillingApiCase

T0 = 1_795_000_000  # 2026-11-18T11:06:40Z


@tagged("post_install", "-at_install")
class TestApiAuth(FusionBillingApiCase):

    def test_health_is_public_and_has_no_secret(self):
        response = self.url_open(f"{self.API}/health")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["status"], "ok")
        self.assertEqual(set(response.json()), {"status", "version"})

    def test_missing_unknown_or_revoked_key_is_401(self):
        expected = {"status": 401, "error": "Unauthorized"}
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            response = self.url_open(f"{self.API}/customers", headers=headers)
            self.assertEqual((response.status_code, response.json()), (401, expected))
        self.service.api_key_ids.action_revoke()
        self.assertEqual(self.api("GET", "customers").status_code, 401)

    def test_no_session_cookie_is_set(self):
        response = self.api("GET", "customers")
        self.assertEqual(response.status_code, 200)
        self.assertNotIn("session_id", response.headers.get("Set-Cookie", ""))

    def test_both_prefixes_serve_the_api(self):
        for prefix in (self.API, self.API_PY):
            response = self.url_open(f"{prefix}/customers", headers=self.auth)
            self.assertEqual(response.status_code, 200, prefix)
            self.assertEqual(response.json()["meta"]["total_count"], 0)

    def test_unknown_route_and_wrong_verb_are_json(self):
        response = self.api("GET", "does/not/exist")
        self.assertEqual(response.json(), {"status": 404, "error": "Not Found", "code": "resource_not_found"})
        response = self.api("PUT", "customers")
        self.assertEqual(response.status_code, 405)
        self.assertEqual(response.json()["code"], "method_not_allowed")

    def test_another_service_objects_are_404(self):
        self.api("POST", "customers", {"customer": {"external_id": "cus_a"}})
        other = self._create_service("NexaDesk", "nexadesk")
        other_key = self._api_key(other)
        response = self.api("GET", "customers/cus_a", key=other_key)
        self.assertEqual(response.status_code, 404)
        self.assertEqual(response.json()["code"], "customer_not_found")
        self.assertEqual(self.api("GET", "customers", key=other_key).json()["customers"], [])


@tagged("post_install", "-at_install")
class TestApiMalformedInput(FusionBillingApiCase):

    @mute_logger("odoo.http")
    def test_malformed_bodies_get_4xx_envelopes(self):
        cases = [
            (b"{not json", 400),
            (b"[1, 2]", 400),
            (b'{"customer": "x"}', 400),
            (b'{"other": {}}', 400),
            (b"\xff\xfe", 400),
            (b'{"customer": {"external_id": 42}}', 422),
            (b'{"customer": {"external_id": "a", "currency": "cad!"}}', 422),
            (b"x" * (1024 * 1024 + 10), 413),
        ]
        for body, status in cases:
            response = self.url_open(f"{self.API}/customers", data=body,
                                     headers=dict(self.auth, **{"Content-Type": "application/json"}))
            self.assertEqual(response.status_code, status, body[:40])
            envelope = response.json()
            self.assertEqual(envelope["status"], status)
            self.assertIn("error", envelope)

    def test_unknown_fields_and_nulls_are_accepted(self):
        response = self.api("POST", "customers", {"customer": {
            "external_id": "cus_n", "name": None, "email": None, "something_new": {"x": 1}}})
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json()["customer"]["external_id"], "cus_n")

    def test_validation_errors_name_the_field(self):
        response = self.api("POST", "subscriptions", {"subscription": {"plan_code": "pro"}})
        self.assertEqual(response.status_code, 422)
        self.assertEqual(response.json()["error_details"], {
            "external_customer_id": ["value_is_mandatory"], "external_id": ["value_is_mandatory"]})

    def test_pagination_meta(self):
        for index in range(5):
            self.api("POST", "customers", {"customer": {"external_id": f"cus_{index}"}})
        body = self.api("GET", "customers", params={"per_page": 2, "page": 2}).json()
        self.assertEqual([c["external_id"] for c in body["customers"]], ["cus_2", "cus_3"])
        self.assertEqual(body["meta"], {"current_page": 2, "next_page": 3, "prev_page": 1,
                                        "total_pages": 3, "total_count": 5})
        self.assertEqual(self.api("GET", "customers", params={"per_page": "x"}).status_code, 422)
        self.assertEqual(len(self.api("GET", "customers").json()["customers"]), 5)  # default per_page 100


@tagged("post_install", "-at_install")
class TestApiCustomersSubscriptions(FusionBillingApiCase):

    def test_customer_upsert_reuses_the_partner_of_another_app(self):
        desk = self._create_service("NexaDesk", "nexadesk")
        self.env["fusion.billing.account.link"].create({
            "service_id": desk.id, "external_id": "desk_1", "partner_id": self.partner.id, "email": "ops@mapleleaf.ca"})
        response = self.api("POST", "customers", {"customer": {
            "external_id": "cloud_1", "email": " OPS@MapleLeaf.CA ", "name": "Maple Leaf"}})
        self.assertEqual(response.status_code, 200)
        link = self.env["fusion.billing.account.link"].search([("external_id", "=", "cloud_1")])
        self.assertEqual(link.partner_id, self.partner)
        # Update only what is sent; another app's contact is not this app's to write (test_identity).
        self.api("POST", "customers", {"customer": {"external_id": "cloud_1", "phone": "+1 613 555 0100"}})
        self.assertEqual((self.partner.phone, self.partner.email), (False, "ops@mapleleaf.ca"))
        self.assertEqual(link.app_values["phone"], "+1 613 555 0100")
        customer = self.api("GET", "customers/cloud_1").json()["customer"]
        self.assertEqual((customer["phone"], customer["name"]), ("+1 613 555 0100", "Maple Leaf"))
        self.assertEqual((customer["external_id"], customer["currency"], customer["applicable_timezone"]),
                         ("cloud_1", "CAD", "UTC"))
        self.assertRegex(customer["created_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")

    def test_subscription_lifecycle_in_shadow_mode(self):
        body = {"subscription": {"external_customer_id": "cus_new", "plan_code": "pro", "external_id": "sub_1"}}
        first = self.api("POST", "subscriptions", body).json()["subscription"]
        self.assertEqual((first["status"], first["plan_code"], first["plan_amount_cents"]), ("active", "pro", 4900))
        self.assertEqual(first["plan"]["charges"][0]["billable_metric_code"], "bandwidth_gb")
        again = self.api("POST", "subscriptions", body).json()["subscription"]
        self.assertEqual(again["lago_id"], first["lago_id"])
        order = self.env["sale.order"].browse(int(first["lago_id"]))
        self.assertEqual(order.state, "draft", "shadow mode never confirms")
        self.assertEqual(order.partner_id.name, "cus_new", "unknown customers are created on the fly")
        listed = self.api("GET", "subscriptions", params={"external_customer_id": "cus_new"}).json()
        self.assertEqual([s["external_id"] for s in listed["subscriptions"]], ["sub_1"])
        terminated = self.api("DELETE", "subscriptions/sub_1").json()["subscription"]
        self.assertEqual(terminated["status"], "terminated")
        self.assertEqual(self.api("GET", "subscriptions/sub_1").status_code, 404)
        self.assertEqual(self.api("GET", "subscriptions/sub_1", params={"status": "terminated"}).status_code, 200)
        self.assertFalse(self.env["account.move"].search([("x_fc_service_id", "=", self.service.id)]))

    def test_live_mode_confirms(self):
        self.service.billing_mode = "live"
        sub = self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "cus_live", "plan_code": "pro", "external_id": "sub_live"}}).json()["subscription"]
        self.assertEqual(self.env["sale.order"].browse(int(sub["lago_id"])).subscription_state, "3_progress")

    def test_unknown_plan_and_taken_external_id(self):
        response = self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "c1", "plan_code": "nope", "external_id": "s1"}})
        self.assertEqual((response.status_code, response.json()["code"]), (404, "plan_not_found"))
        self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "c1", "plan_code": "pro", "external_id": "s1"}})
        response = self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "c2", "plan_code": "pro", "external_id": "s1"}})
        self.assertEqual(response.json()["error_details"], {"external_id": ["value_already_exist"]})

    def test_customer_delete_terminates_subscriptions(self):
        self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": "c9", "plan_code": "pro", "external_id": "s9"}})
        self.assertEqual(self.api("DELETE", "customers/c9").status_code, 200)
        self.assertEqual(self.api("GET", "customers/c9").status_code, 404)
        self.assertEqual(self.api("GET", "subscriptions/s9").status_code, 404)

    def test_catalog_is_read_only_and_scoped(self):
        plans = self.api("GET", "plans").json()
        self.assertEqual([p["code"] for p in plans["plans"]], ["pro"])
        self.assertEqual(self.api("GET", "plans/pro").json()["plan"]["interval"], "monthly")
        self.assertEqual(self.api("GET", "billable_metrics/bandwidth_gb").json()["billable_metric"]["aggregation_type"],
                         "sum_agg")
        self.assertEqual(self.api("POST", "plans", {"plan": {"code": "x"}}).status_code, 405)


@tagged("post_install", "-at_install")
class TestApiEvents(FusionBillingApiCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.subscription = cls._create_subscription(
            partner=cls.env["fusion.billing.account.link"].create({
                "service_id": cls.service.id, "external_id": "cus_1", "partner_id": cls.partner.id}).partner_id,
            external_id="sub_1", start_date="2026-11-01")
        cls.subscription.x_fc_account_link_id = cls.env["fusion.billing.account.link"].search([("external_id", "=", "cus_1")])

    def _event(self, tx, gb, ts=T0, **extra):
        return dict({"transaction_id": tx, "external_subscription_id": "sub_1", "code": "bandwidth_gb",
                     "timestamp": ts, "properties": {"gb": gb}}, **extra)

    def _usage(self):
        """The usage row, made exact first: events add append-only deltas that the period close
        (and a cron job) fold into it (``fusion.billing.usage._fc_fold``)."""
        self.env["fusion.billing.usage"]._fc_fold(self.subscription.ids)
        return self.env["fusion.billing.usage"].search([("subscription_id", "=", self.subscription.id)])

    def test_event_rolls_up_once_and_replay_is_harmless(self):
        response = self.api("POST", "events", {"event": self._event("tx1", 40)})
        self.assertEqual(response.status_code, 200)
        event = response.json()["event"]
        self.assertEqual((event["status"], event["timestamp"]), ("processed", "2026-11-18T11:06:40.000Z"))
        replay = self.api("POST", "events", {"event": self._event("tx1", 40)})
        self.assertEqual((replay.status_code, replay.json()["event"]["lago_id"]), (200, event["lago_id"]))
        conflict = self.api("POST", "events", {"event": self._event("tx1", 41)})
        self.assertEqual((conflict.status_code, conflict.json()["error_details"]),
                         (422, {"transaction_id": ["value_already_exist"]}))
        self.api("POST", "events", {"event": self._event("tx2", "2.5")})
        live = self.env["fusion.billing.usage"]._fc_live_totals(self.subscription, self.subscription._fc_period(
            datetime.fromtimestamp(T0))[0])
        self.assertEqual(live[self.metric_bandwidth.id], (Decimal("42.5"), 2), "readers add the deltas not folded yet")
        usage = self._usage()
        self.assertEqual((usage.quantity, usage.events_count), (42.5, 2))
        self.assertEqual((str(usage.period_start), str(usage.period_end)), ("2026-11-01", "2026-12-01"))

    def test_batch_is_all_or_nothing(self):
        bad = self.api("POST", "events/batch", {"events": [self._event("b1", 1), {"code": "bandwidth_gb"}]})
        self.assertEqual(bad.status_code, 422)
        self.assertEqual(bad.json()["error_details"], {"1": {
            "transaction_id": ["value_is_mandatory"], "external_subscription_id": ["value_is_mandatory"]}})
        self.assertFalse(self.env["fusion.billing.event"].search([("transaction_id", "=", "b1")]))
        self.assertEqual(self.api("POST", "events/batch", {"events": []}).json()["error_details"],
                         {"events": ["no_events"]})
        too_many = [self._event(f"m{i}", 1) for i in range(101)]
        self.assertEqual(self.api("POST", "events/batch", {"events": too_many}).json()["error_details"],
                         {"events": ["too_many_events"]})
        ok = self.api("POST", "events/batch", {"events": [self._event(f"ok{i}", 1) for i in range(100)]})
        self.assertEqual((ok.status_code, len(ok.json()["events"])), (200, 100))
        self.assertEqual(self._usage().quantity, 100)

    def test_batch_with_a_conflicting_replay_rolls_back(self):
        self.api("POST", "events", {"event": self._event("c1", 5)})
        response = self.api("POST", "events/batch", {"events": [self._event("c2", 1), self._event("c1", 6)]})
        self.assertEqual(response.json()["error_details"], {"1": {"transaction_id": ["value_already_exist"]}})
        self.assertFalse(self.env["fusion.billing.event"].search([("transaction_id", "=", "c2")]))
        self.assertEqual(self._usage().quantity, 5)

    def test_unbillable_events_are_stored_and_surfaced(self):
        self.api("POST", "events/batch", {"events": [
            self._event("u1", 1, external_subscription_id="sub_unknown"),
            self._event("u2", 1, code="no_such_metric"),
            self._event("u3", None),
        ]})
        states = dict(self.env["fusion.billing.event"].search([("transaction_id", "in", ("u1", "u2", "u3"))])
                      .mapped(lambda e: (e.transaction_id, e.state)))
        self.assertEqual(states, {"u1": "unknown_subscription", "u2": "unknown_metric", "u3": "invalid_property"})
        listed = self.api("GET", "events", params={"status": "unbillable"}).json()
        self.assertEqual(sorted(e["transaction_id"] for e in listed["events"]), ["u1", "u2", "u3"])
        self.assertFalse(self._usage())
        self.assertEqual(self.api("GET", "events/u2").json()["event"]["status"], "unknown_metric")

    def test_timestamps(self):
        self.api("POST", "events", {"event": self._event("t1", 1, timestamp=f"{T0}.25")})
        self.assertEqual(self.api("GET", "events/t1").json()["event"]["timestamp"], "2026-11-18T11:06:40.250Z")
        bad = self.api("POST", "events", {"event": self._event("t2", 1, timestamp="2026-11-18T00:00:00Z")})
        self.assertEqual(bad.json()["error_details"], {"timestamp": ["invalid_format"]})
        self.assertEqual(self.api("POST", "events", {"event": self._event("t3", 1, timestamp=None)}).status_code, 200)

    def test_concurrent_duplicates_store_one_event(self):
        body = json.dumps({"event": self._event("dup", 7)})
        headers = dict(self.auth, **{"Content-Type": "application/json"})
        url = f"{self.base_url()}{self.API}/events"
        with self.outside_client(), ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _i: requests.post(url, data=body, headers=headers, timeout=60), range(16)))
        self.assertEqual({r.status_code for r in responses}, {200})
        self.assertEqual(len({r.json()["event"]["lago_id"] for r in responses}), 1)
        self.assertEqual(self.env["fusion.billing.event"].search_count([("transaction_id", "=", "dup")]), 1)
        self.assertEqual((self._usage().quantity, self._usage().events_count), (7, 1))

    def test_current_usage_is_rated(self):
        self.api("POST", "events", {"event": self._event("r1", 150)})
        usage = self.api("GET", "customers/cus_1/current_usage",
                         params={"external_subscription_id": "sub_1", "apply_taxes": "false"}).json()["customer_usage"]
        charge = usage["charges_usage"][0]
        # 100 GB included, 50 GB over at 0.05 = 2.50
        self.assertEqual((charge["units"], charge["amount_cents"], usage["amount_cents"]), ("150", 250, 250))
        self.assertEqual(usage["currency"], "CAD")
        missing = self.api("GET", "customers/cus_1/current_usage", params={"external_subscription_id": "nope"})
        self.assertEqual((missing.status_code, missing.json()["code"]), (405, "no_active_subscription"))


@tagged("post_install", "-at_install")
class TestOfficialPythonClient(FusionBillingApiCase):
    """The unmodified lago-python-client, pointed at Odoo with api_url=<odoo>/api/billing/."""

    def test_scenario(self):
        from lago_python_client.client import Client
        from lago_python_client.exceptions import LagoApiError
        from lago_python_client.models import Customer, Event, Subscription

        client = Client(api_key=self.plaintext, api_url=f"{self.base_url()}/api/billing/")
        with self.outside_client():
            self._scenario(client, Customer, Event, Subscription, LagoApiError)

    def _scenario(self, client, Customer, Event, Subscription, LagoApiError):
        customer = client.customers.create(Customer(external_id="py_1", name="Ottawa Maps Ltd", email="a@ottawa.ca"))
        self.assertEqual(customer.external_id, "py_1")
        subscription = client.subscriptions.create(Subscription(
            external_customer_id="py_1", plan_code="pro", external_id="py_sub"))
        self.assertEqual(subscription.status, "active")
        event = client.events.create(Event(
            transaction_id="py_tx", external_subscription_id="py_sub", code="bandwidth_gb", properties={"gb": 120}))
        self.assertEqual(event.transaction_id, "py_tx")
        usage = client.customers.current_usage("py_1", "py_sub")
        self.assertEqual(usage.amount_cents, 100)
        self.assertEqual(client.customers.find("py_1").name, "Ottawa Maps Ltd")
        listed = client.subscriptions.find_all({"external_customer_id": "py_1"})
        self.assertEqual([s.external_id for s in listed["subscriptions"]], ["py_sub"])
        self.assertEqual(listed["meta"]["total_count"], 1)
        self.assertEqual(client.plans.find("pro").code, "pro")
        self.assertEqual(client.billable_metrics.find("bandwidth_gb").code, "bandwidth_gb")
        self.assertEqual(client.invoices.find_all()["invoices"], [])
        with self.assertRaises(LagoApiError) as caught:
            client.customers.find("missing")
        self.assertEqual(caught.exception.status_code, 404)
        self.assertEqual(client.subscriptions.destroy("py_sub").status, "terminated")
