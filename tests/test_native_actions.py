"""What a person does to an app's subscription with Odoo's own buttons reaches the app as the API's
own actions would: a native *Cancel* is the subscription's termination (Lago's ``terminated`` for one
that had started, ``canceled`` for one that had not), and a native close or Cancel while a downgrade
is scheduled cancels the downgrade's renewal, which then never starts, bills or activates."""
import json
from datetime import date, datetime
from unittest.mock import patch

from freezegun import freeze_time

from odoo.exceptions import UserError
from odoo.tests import new_test_user, tagged

from .test_billing_continuity import ContinuityCase
from .test_billing_cycle import lines_of

LIFECYCLE = ("subscription.started", "subscription.updated", "subscription.terminated", "subscription.canceled")


@tagged("post_install", "-at_install")
class TestNativeCancelAndClose(ContinuityCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.salesperson = new_test_user(cls.env, "fc_native_sales", groups="sales_team.group_sale_salesman_all_leads")

    def sent(self, order):
        """(type, status) of the lifecycle webhooks queued about ``order``, oldest first."""
        rows = self.env["fusion.billing.webhook"].search([
            ("object_ref", "=", f"sale.order,{order.id}"), ("event_type", "in", LIFECYCLE)], order="id")
        return [(row.event_type, json.loads(row.payload)["subscription"]["status"]) for row in rows]

    def cancel(self, order, day):
        """The salesperson's *Cancel* button on ``order`` (the warning about its invoices confirmed)."""
        with freeze_time(day):
            order.with_user(self.salesperson).with_context(disable_cancel_warning=True).action_cancel()
        self.env.invalidate_all()

    def get(self, external_id, day, status=None):
        with freeze_time(day):
            return self.api("GET", f"subscriptions/{external_id}", params={"status": status} if status else None)

    def listed(self, day, status):
        with freeze_time(day):
            return [s["lago_id"] for s in self.api("GET", "subscriptions", params={"status": status}).json()["subscriptions"]]

    # ------------------------------------------------------------------ Cancel
    def test_a_salespersons_cancel_terminates_the_app_subscription(self):
        order = self.subscribe("sub_nc", customer="cus_nc")
        self.recurring("2025-01-01 03:00:00")
        self.push("sub_nc", "nc-jan", (2025, 1, 10), 300)
        self.cancel(order, "2025-01-20 10:00:00")

        self.assertEqual(self.sent(order), [("subscription.started", "active"), ("subscription.terminated", "terminated")],
                         "the app hears of it once, as of a termination")
        terminated = self.env["fusion.billing.webhook"].search([
            ("object_ref", "=", f"sale.order,{order.id}"), ("event_type", "=", "subscription.terminated")])
        webhook = json.loads(terminated.payload)["subscription"]
        self.assertEqual((webhook["terminated_at"], webhook["canceled_at"]), ("2025-01-20T10:00:00Z", None))
        self.assertEqual(self.get("sub_nc", "2025-01-20 11:00:00").status_code, 404)
        found = self.get("sub_nc", "2025-01-20 11:00:00", status="terminated").json()["subscription"]
        self.assertEqual((found["lago_id"], found["status"], found["terminated_at"]),
                         (str(order.id), "terminated", "2025-01-20T10:00:00Z"), "the API says what the webhook said")
        self.assertIn(str(order.id), self.listed("2025-01-20 11:00:00", "terminated"))
        self.assertNotIn(str(order.id), self.listed("2025-01-20 11:00:00", "canceled"))
        with freeze_time("2025-01-20 12:00:00"):
            again = self.api("DELETE", "subscriptions/sub_nc", params={"status": "terminated"})
        self.assertEqual((again.status_code, again.json()["subscription"]["terminated_at"]),
                         (200, "2025-01-20T10:00:00Z"), again.text)
        self.assertEqual(len(self.sent(order)), 2, "terminating it again sends nothing")
        self.assertEqual(self.push("sub_nc", "nc-late", (2025, 1, 21), 50)["status"], "unknown_subscription")

        # A cancelled order is void in Odoo: the usage of its cut-short period is not billed (Lago would
        # bill it on termination; a person who wants it billed closes the subscription instead).
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.assertEqual(lines_of(order.invoice_ids).mapped("price_subtotal"), [49.0], "January's fee only")

    def test_a_cancelled_app_subscription_is_not_set_back_to_quotation(self):
        """The app was told it ended: Odoo reviving it would bill a fee for a subscription the app has
        terminated (and takes no events for). The salesperson is told to start a new one instead."""
        order = self.subscribe("sub_nr", customer="cus_nr")
        self.cancel(order, "2025-01-20 10:00:00")
        with self.assertRaisesRegex(UserError, "sub_nr"), self.env.cr.savepoint():
            order.with_user(self.salesperson).action_draft()
        self.assertEqual(order.state, "cancel")
        quotation = self.env["sale.order"].create({"partner_id": self.partner.id})
        quotation.with_user(self.salesperson).action_cancel()
        quotation.with_user(self.salesperson).action_draft()
        self.assertEqual(quotation.state, "draft", "other orders are set back to quotation as before")

    def test_a_cancel_before_the_start_is_the_app_subscription_canceled(self):
        with freeze_time("2025-01-10 09:00:00"):
            response = self.api("POST", "subscriptions", {"subscription": {
                "external_customer_id": "cus_np", "plan_code": "pro", "external_id": "sub_np",
                "subscription_at": "2025-02-01T00:00:00Z"}})
        order = self.env["sale.order"].browse(int(response.json()["subscription"]["lago_id"]))
        self.assertEqual((response.json()["subscription"]["status"], order.state), ("pending", "sale"))
        self.cancel(order, "2025-01-20 10:00:00")
        self.assertEqual(self.sent(order)[1:], [("subscription.terminated", "canceled")],
                         "as Lago terminating a pending subscription")
        found = self.get("sub_np", "2025-01-20 11:00:00", status="canceled").json()["subscription"]
        self.assertEqual((found["lago_id"], found["canceled_at"], found["terminated_at"]),
                         (str(order.id), "2025-01-20T10:00:00Z", None))
        self.assertEqual(self.get("sub_np", "2025-02-02", status="canceled").json()["subscription"]["status"],
                         "canceled", "still canceled once its start has passed")
        self.assertNotIn(str(order.id), self.listed("2025-02-02", "terminated"))
        self.recurring("2025-02-01 03:00:00")
        self.assertFalse(order.invoice_ids)

    def test_cancelling_a_quotation_the_app_never_had_tells_it_nothing(self):
        """A renewal quotation carries the app's service but is not its subscription (no external id)."""
        order = self.subscribe("sub_nq", customer="cus_nq")
        with freeze_time("2025-01-15"):
            quotation = self.env["sale.order"].browse(order.prepare_renewal_order()["res_id"])
        self.cancel(quotation, "2025-01-16")
        self.assertEqual((self.sent(quotation), self.sent(order)), ([], [("subscription.started", "active")]))
        self.assertEqual(self.get("sub_nq", "2025-01-17").json()["subscription"]["lago_id"], str(order.id))

    def test_a_shadow_draft_cancelled_is_recorded_never_sent(self):
        """Shadow: the app runs the subscription itself and the API shows Odoo's draft copy as active. A
        person's Cancel ends that copy as a termination would (the API answers ``terminated``); the
        webhook is recorded as shadow mode records every webhook, never sent."""
        self.service.billing_mode = "shadow"
        order = self.subscribe("sub_ns", customer="cus_ns")
        self.assertEqual(order.state, "draft")
        self.cancel(order, "2025-01-20 10:00:00")
        rows = self.env["fusion.billing.webhook"].search([
            ("object_ref", "=", f"sale.order,{order.id}"), ("event_type", "=", "subscription.terminated")])
        self.assertEqual(rows.mapped("state"), ["shadow"])
        found = self.get("sub_ns", "2025-01-21", status="terminated").json()["subscription"]
        self.assertEqual((found["lago_id"], found["status"]), (str(order.id), "terminated"))

    # ------------------------------------------------------------------ a downgrade scheduled
    def test_a_native_close_cancels_the_scheduled_downgrade(self):
        self._plan("basic", "NexaCloud Basic", 19.0)
        order, basic = self._downgraded_on_january_10("sub_dc", "cus_dc", "basic")
        self.push_january("sub_dc")
        with freeze_time("2025-01-20 10:00:00"):  # the Close button's wizard
            order.with_user(self.salesperson).set_close(close_reason_id=self.env.ref("sale_subscription.close_reason_1").id)
        self.env.invalidate_all()
        self.assertEqual((order.subscription_state, order.x_fc_terminated_at, basic.state),
                         ("6_churn", datetime(2025, 1, 20, 10), "cancel"), "the downgrade's renewal is cancelled")
        found = self.get("sub_dc", "2025-01-20 11:00:00", status="terminated").json()["subscription"]
        self.assertEqual((found["lago_id"], found["next_plan_code"]), (str(order.id), None))
        self.close("2025-01-20 12:00:00")
        final = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 1, 20))
        self.assertEqual(lines_of(final).mapped("price_subtotal"), [7.5, 6.0], "January's usage on its final invoice")

        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.close("2025-02-01 05:00:00")
        self.assertFalse(basic.invoice_ids, "Basic never starts")
        self.assertEqual(self.sent(order), [("subscription.started", "active"), ("subscription.updated", "active"),
                                            ("subscription.terminated", "terminated")])
        self.assertEqual(self.sent(basic), [], "no later activation")
        self.assertEqual(self.get("sub_dc", "2025-02-02").status_code, 404)
        self.assertEqual(self.get("sub_dc", "2025-02-02", status="terminated").json()["subscription"]["lago_id"],
                         str(order.id))

    def test_a_salesperson_of_own_documents_closes_a_subscription_with_a_downgrade_scheduled(self):
        """A salesperson who sees only their own documents closes the subscription assigned to them:
        the downgrade's renewal, which the app's call created (not theirs), is cancelled all the same."""
        own = new_test_user(self.env, "fc_native_own_sales", groups="sales_team.group_sale_salesman")
        self._plan("basic", "NexaCloud Basic", 19.0)
        order, basic = self._downgraded_on_january_10("sub_own", "cus_own", "basic")
        order.user_id = own
        basic.user_id = self.env.user  # someone else's document
        with freeze_time("2025-01-20 10:00:00"):
            order.with_user(own).set_close(close_reason_id=self.env.ref("sale_subscription.close_reason_1").id)
        self.env.invalidate_all()
        self.assertEqual((order.subscription_state, basic.state), ("6_churn", "cancel"))
        self.assertEqual(self.sent(basic), [], "no later activation")

    def test_a_native_cancel_cancels_the_scheduled_downgrade(self):
        self._plan("basic", "NexaCloud Basic", 19.0)
        order, basic = self._downgraded_on_january_10("sub_dx", "cus_dx", "basic")
        self.cancel(order, "2025-01-20 10:00:00")
        self.assertEqual((order.state, basic.state), ("cancel", "cancel"))
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.assertFalse(basic.invoice_ids, "Basic never starts")
        self.assertEqual(self.sent(order)[1:], [("subscription.updated", "active"), ("subscription.terminated", "terminated")])
        self.assertEqual(self.sent(basic), [])
        self.assertEqual(self.get("sub_dx", "2025-02-02").status_code, 404)
        found = self.get("sub_dx", "2025-02-02", status="terminated").json()["subscription"]
        self.assertEqual((found["lago_id"], found["terminated_at"]), (str(order.id), "2025-01-20T10:00:00Z"))

    def test_a_native_cancel_of_the_downgrades_renewal(self):
        """A person cancels the renewal a downgrade scheduled: the app's pending subscription is canceled
        (as Lago's ``DELETE …?status=pending``) and the current one has no next plan. Odoo leaves the
        current order *Renewed* (it ends at its period end, its last usage on its own final invoice):
        the app hears of that end then, and never of a start of the cancelled renewal."""
        self._plan("basic", "NexaCloud Basic", 19.0)
        order, basic = self._downgraded_on_january_10("sub_dr", "cus_dr", "basic")
        self.cancel(basic, "2025-01-20 10:00:00")
        self.assertEqual(self.sent(basic), [("subscription.terminated", "canceled")])
        self.assertEqual(self.sent(order)[1:], [("subscription.updated", "active")] * 2, "its next plan is gone")
        current = self.get("sub_dr", "2025-01-21").json()["subscription"]
        self.assertEqual((current["lago_id"], current["next_plan_code"]), (str(order.id), None))

        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        self.close("2025-02-01 05:00:00")
        self.assertEqual(self.sent(basic), [("subscription.terminated", "canceled")], "no later activation")
        self.assertEqual(self.sent(order)[3:], [("subscription.terminated", "terminated")])
        self.assertEqual(self.get("sub_dr", "2025-02-02", status="terminated").json()["subscription"]["lago_id"],
                         str(order.id))

    def test_an_original_odoo_reopens_when_its_renewal_is_cancelled_goes_on(self):
        """Should Odoo reopen the original (*In Progress*) when a person cancels the downgrade's renewal
        (the stand-in leaves it *Renewed*; Enterprise may not), before or after the renewal is
        cancelled: the original goes on billing its plan, and the app never hears it ended."""
        self._plan("basic", "NexaCloud Basic", 19.0)
        engine = type(self.env["sale.order"])
        cancel = engine._action_cancel

        def reopen(orders):
            for order in orders.filtered(lambda o: o.subscription_id.subscription_state == "5_renewed"):
                order.subscription_id.subscription_state = "3_progress"

        def reopening_before(orders, *args, **kwargs):
            reopen(orders)
            return cancel(orders, *args, **kwargs)

        def reopening_after(orders, *args, **kwargs):
            res = cancel(orders, *args, **kwargs)
            reopen(orders)
            return res

        originals = []
        for name, reopening in (("before", reopening_before), ("after", reopening_after)):
            order, basic = self._downgraded_on_january_10(f"sub_ro_{name}", f"cus_ro_{name}", "basic")
            with patch.object(engine, "_action_cancel", reopening):
                self.cancel(basic, "2025-01-20 10:00:00")
            self.assertEqual((order.subscription_state, order.x_fc_successor_id, order.x_fc_terminated_at),
                             ("3_progress", self.env["sale.order"], False), name)
            originals.append(order)
        self.recurring("2025-02-01 03:00:00")
        self.close("2025-02-01 04:00:00")
        for order in originals:
            february = order.invoice_ids.filtered(lambda m: m.invoice_date == date(2025, 2, 1))
            self.assertEqual(lines_of(february).mapped("price_subtotal")[:1], [49.0], "Pro goes on")
            self.assertNotIn(("subscription.terminated", "terminated"), self.sent(order))
            found = self.get(order.x_fc_external_id, "2025-02-02").json()["subscription"]
            self.assertEqual((found["lago_id"], found["status"], found["next_plan_code"]), (str(order.id), "active", None))
