"""A unique violation in a creating handler is replayed once (two simultaneous first creations: the
replay finds the winner's row); a collision the replay does not resolve is the caller's 422, not
replays until Odoo gives up (~30 s of a worker) and a 503 forever. Cancelled orders (a person's
native Cancel) free their external id and take no events."""
import time
from types import SimpleNamespace
from unittest.mock import patch

import odoo.service.model
from odoo.tests import new_test_user, tagged
from odoo.tools import mute_logger

from .common import FusionBillingApiCase


@tagged("post_install", "-at_install")
class TestApiCollisions(FusionBillingApiCase):

    def setUp(self):
        super().setUp()
        # Count Odoo's request replays (each draws its back-off) and do not wait between them.
        self.replays = 0

        def uniform(_low, _high):
            self.replays += 1
            return 0.0
        patcher = patch.object(odoo.service.model, "random", SimpleNamespace(uniform=uniform))
        patcher.start()
        self.addCleanup(patcher.stop)

    def subscribe(self, external_id, customer="cus_col"):
        return self.api("POST", "subscriptions", {"subscription": {
            "external_customer_id": customer, "plan_code": "pro", "external_id": external_id}})

    def test_a_collision_no_replay_resolves_is_a_422(self):
        # A quotation holding the app's id that the API does not see as a subscription (a person
        # removed its plan): the unique index refuses every new order with that id.
        self._create_subscription(external_id="sub_hidden").plan_id = False
        with mute_logger("odoo.service.model", "odoo.http", "odoo.sql_db"):
            response = self.subscribe("sub_hidden")
        self.assertEqual((response.status_code, response.json().get("error_details")),
                         (422, {"external_id": ["value_already_exist"]}), response.text)
        self.assertEqual(self.replays, 1, "replayed once, as for a simultaneous first creation")
        self.assertEqual(self.env["sale.order"].search_count([("x_fc_external_id", "=", "sub_hidden")]), 1)

    def test_a_cancelled_order_frees_its_external_id(self):
        first = self.subscribe("sub_cancel")
        self.assertEqual(first.status_code, 200, first.text)
        order = self.env["sale.order"].browse(int(first.json()["subscription"]["lago_id"]))
        salesperson = new_test_user(self.env, "fc_col_sales", groups="sales_team.group_sale_salesman_all_leads")
        order.with_user(salesperson).with_context(disable_cancel_warning=True).action_cancel()  # native Cancel
        self.assertEqual(order.state, "cancel")
        with mute_logger("odoo.service.model", "odoo.http", "odoo.sql_db"):
            again = self.subscribe("sub_cancel")
        self.assertEqual(again.status_code, 200, again.text)
        self.assertNotEqual(again.json()["subscription"]["lago_id"], str(order.id))
        self.assertEqual(again.json()["subscription"]["status"], "active")
        self.assertEqual(self.replays, 0)

    def test_a_cancelled_order_takes_no_events(self):
        response = self.subscribe("sub_gone")
        order = self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))
        order.with_context(disable_cancel_warning=True).action_cancel()
        event = {"transaction_id": "tx_gone", "external_subscription_id": "sub_gone", "code": "bandwidth_gb",
                 "timestamp": int(time.time()), "properties": {"gb": 10}}
        answer = self.api("POST", "events", {"event": event})
        self.assertEqual(answer.status_code, 200, answer.text)
        self.assertEqual((answer.json()["event"]["status"], answer.json()["event"]["lago_subscription_id"]),
                         ("unknown_subscription", None), "never 'processed' on an order nobody bills")
        self.assertFalse(self.env["fusion.billing.usage.delta"].search([("subscription_id", "=", order.id)]))
