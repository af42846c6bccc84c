"""An app subscription's life on native Odoo subscriptions: start, plan changes, termination, and
following what Odoo itself does to the order (closing, renewal, upsell).

Odoo closes subscriptions in several ways (the Close button, the customer portal, the end date,
Automatic Closing of unpaid ones): all end in ``subscription_state = '6_churn'``, which
``follow`` sees whichever path wrote it. Renewal and upsell orders are Odoo's own; the app's ids
move to the order that carries its subscription on. Plan changes follow Lago: an upgrade applies
at once with a prorated credit for the unused paid part of the fee, a downgrade at the end of the
paid period (a native renewal order), so no overlap is ever paid twice.
"""
import logging
from datetime import datetime, time, timedelta
from decimal import Decimal

from odoo import Command, fields
from odoo.exceptions import UserError

from ..core import money, periods
from .billing_cycle import BillingCycle

_logger = logging.getLogger(__name__)

RUNNING = ("3_progress", "4_paused")


class SubscriptionLifecycle:

    def __init__(self, env):
        self.env = env
        self.orders = env["sale.order"]

    # ------------------------------------------------------------------ start
    def start(self, service, link, plan, values, previous=None, notify=True):
        """A new app subscription on ``plan`` (``values``: Lago's clean subscription fields).
        Live: confirmed, so Odoo's recurring run bills it from its start; shadow: a draft.
        ``notify=False``: the app hears of it when it takes over (``notify_handovers``)."""
        start = values.get("subscription_at")
        order = self.orders.create({
            "partner_id": link.partner_id.id,
            "company_id": service.company_id.id,
            "pricelist_id": service._fc_pricelist(plan._fc_currency()).id,
            "plan_id": plan.id,
            "x_fc_service_id": service.id,
            "x_fc_account_link_id": link.id,
            "x_fc_external_id": values["external_id"],
            "x_fc_previous_plan_code": previous.plan_id.x_fc_plan_code if previous else False,
            "client_order_ref": values.get("name") or (previous.client_order_ref if previous else False),
            "start_date": values.get("start_date") or (start.date() if start else fields.Date.context_today(self.orders)),
            "end_date": values["ending_at"].date() if values.get("ending_at") else False,
            "payment_token_id": previous.payment_token_id.id if previous else False,
            "order_line": [Command.create(plan._fc_base_fee_line_values())] if plan.x_fc_product_id else [],
        })
        if not service._is_shadow():
            order.action_confirm()
        if notify:
            order._fc_notify("subscription.started")
        return order

    # ------------------------------------------------------------------ termination
    def terminate(self, orders, bill=True, reason=None):
        """Lago termination: live subscriptions are closed natively (with a close reason), pending
        ones cancelled, shadow ones only marked; the final period is billed at once (recorded
        only with ``bill=False``). An already terminated subscription is left as it is: same date,
        no second invoice, no second webhook."""
        now = fields.Datetime.now()
        reason = reason or self.env.ref("fusion_centralize_billing.close_reason_app", raise_if_not_found=False)
        to_close = self.orders
        for order in orders:
            status = order._api_status()
            if status in ("terminated", "canceled"):
                continue
            self._end(order, now)
            if status == "pending":
                self._cancel(order)
                predecessor = self.orders.search([("x_fc_successor_id", "=", order.id)])
                if predecessor:  # the app cancelled the plan change it had scheduled: its plan goes on
                    self._resume(predecessor)
                    predecessor._fc_notify("subscription.updated")
            elif order.state == "sale" and order.subscription_state in RUNNING:
                order.set_close(close_reason_id=reason.id if reason else None)
            order._fc_notify("subscription.terminated")
            if status != "pending":
                to_close |= order
        BillingCycle(self.env).close_now(to_close, bill=bill)
        return orders

    def _end(self, order, at):
        """The app's subscription ``order`` ends at ``at``: what was to continue it from its period end
        (a scheduled downgrade) is cancelled, since nothing is billed after it ends, and its external
        id is free for a new subscription."""
        self._cancel_pending_successor(order)
        order.x_fc_terminated_at = at
        order.flush_recordset(["x_fc_terminated_at"])  # frees the external id first (unique index)

    @staticmethod
    def _ended(order, now):
        """Whether the app's subscription ``order`` was already terminated (by the app, or followed)."""
        return bool(order.x_fc_terminated_at) and order.x_fc_terminated_at <= now

    def _pending_successor(self, order):
        """The order set to continue ``order`` from its period end (a scheduled downgrade, or a renewal
        confirmed ahead) while it has not started yet; empty otherwise. Read and ended as code: only
        code links it (``x_fc_successor_id`` is code-only), so whoever may end ``order`` ends what
        continues it, also when the app's call created it (a salesperson seeing only their own
        documents closing the subscription assigned to them)."""
        successor = order.x_fc_successor_id.sudo()
        return successor if successor and successor._api_status() == "pending" else self.orders

    def _cancel_pending_successor(self, order):
        """Cancel what was to continue ``order`` at its period end and has not started (Lago cancels a
        pending next subscription when the current one ends or changes plan again): it is never billed
        and frees the app's external id; ``order`` runs on as before. Returns the cancelled order."""
        successor = self._pending_successor(order)
        if successor:
            successor.x_fc_terminated_at = fields.Datetime.now()
            successor.flush_recordset(["x_fc_terminated_at"])  # frees the external id first (unique index)
            self._cancel(successor)
            self._resume(order)
        return successor

    @staticmethod
    def _cancel(order):
        """Cancel a subscription that has not started (a confirmed one is locked under *Lock Confirmed Sales*)."""
        if order.locked:
            order.action_unlock()
        order.with_context(disable_cancel_warning=True).action_cancel()

    def _resume(self, order):
        """``order`` no longer ends at its period end: nothing continues it, it bills on as before."""
        order.write({"x_fc_successor_id": False, "x_fc_terminated_at": False, "x_fc_handover_notified": False})
        # Confirming the renewal made it Renewed; with the renewal cancelled it is In Progress again
        # (unless Odoo already reopened it when the renewal was cancelled).
        if order.state == "sale" and order.subscription_state == "5_renewed":
            order.subscription_state = "3_progress"

    # ------------------------------------------------------------------ following Odoo
    def follow(self, orders):
        """Odoo changed these app subscriptions' native state (any path): a close or a person's
        *Cancel* ends the app's subscription as the API's termination does (what was scheduled to
        continue it is cancelled; one ``subscription.terminated``, as Lago: ``terminated`` if it had
        started, ``canceled`` if not). A cancelled order bills nothing more: the usage of its cut-short
        period is not billed (Odoo voids the order; a close bills it)."""
        now = fields.Datetime.now()
        cancelled = orders.filtered(lambda o: o.state == "cancel")
        predecessors = self.orders.search([("x_fc_successor_id", "in", cancelled.ids)]) if cancelled else self.orders
        for order in orders:
            if order.state == "cancel":
                if order.x_fc_external_id and not self._ended(order, now):  # a person's Cancel
                    self._end(order, now)
                    order._fc_notify("subscription.terminated")
                    # The renewal a downgrade scheduled: the current order has no next plan. Odoo
                    # leaves it Renewed (it ends at its period end, as notify_handovers tells) or
                    # reopens it (it goes on).
                    for predecessor in predecessors.filtered(lambda p, order=order: p.x_fc_successor_id == order):
                        self._reopened(predecessor)
                        predecessor._fc_notify("subscription.updated")
            elif order.subscription_state == "6_churn":
                if self._ended(order, now):
                    continue  # terminated already (the app's DELETE, or closed before)
                ended = now
                if order.end_date:  # expiry: served to the end of its end date, at the latest
                    ended = min(now, datetime.combine(order.end_date + timedelta(days=1), time.min))
                self._end(order, ended)
                order._fc_notify("subscription.terminated")
            elif order.subscription_state == "5_renewed":
                self.adopt_app_ids(self.orders.search([
                    ("subscription_id", "=", order.id), ("state", "=", "sale"),
                    ("subscription_state", "in", RUNNING)], order="id desc", limit=1))
            else:
                self._reopened(order)

    def _reopened(self, order):
        """Odoo put ``order`` back In Progress once what was to continue it is cancelled: it goes on."""
        if order.state == "sale" and order.subscription_state in RUNNING and order.x_fc_successor_id.state == "cancel":
            self._resume(order)

    def refuse_revival(self, orders):
        """A cancelled app subscription the app was told ended (``follow``, ``terminate``) is not set
        back to quotation: confirmed again, Odoo would bill it while the app has it terminated (and
        its events go nowhere). The app starts a new subscription instead."""
        ended = orders.filtered(lambda o: o.state == "cancel" and o.x_fc_external_id and o.x_fc_terminated_at)
        if ended:
            raise UserError(self.env._(
                "%(orders)s: the app was told its subscription (%(ids)s) ended when the order was cancelled, so "
                "it cannot be set back to quotation. Start a new subscription from the app instead.",
                orders=", ".join(ended.mapped("name")), ids=", ".join(ended.mapped("x_fc_external_id"))))

    def adopt_app_ids(self, orders):
        """Confirmed renewal and upsell orders carry the app's ids: a renewal becomes the app's
        subscription from its start (the renewed order ends there); an upsell belongs to the same
        app account (its invoice is the app's) while the subscription it adds to stays the live one."""
        for order in orders.filtered(lambda o: o.subscription_id and o.state == "sale"):
            parent = order.subscription_id
            if not parent.x_fc_service_id:
                continue
            if order.subscription_state == "7_upsell":
                if not order.x_fc_service_id:
                    order.write({"x_fc_service_id": parent.x_fc_service_id.id,
                                 "x_fc_account_link_id": parent.x_fc_account_link_id.id})
                parent._fc_notify("subscription.updated")
            elif order.subscription_state in RUNNING and parent.subscription_state == "5_renewed" \
                    and not order.x_fc_external_id and parent.x_fc_external_id:
                starts = datetime.combine(order.start_date or fields.Date.context_today(order), time.min)
                parent.write({"x_fc_successor_id": order.id,
                              "x_fc_terminated_at": min(parent.x_fc_terminated_at or starts, starts)})
                parent.flush_recordset(["x_fc_terminated_at"])  # frees the external id first (unique index)
                order.write({
                    "x_fc_service_id": parent.x_fc_service_id.id,
                    "x_fc_account_link_id": parent.x_fc_account_link_id.id,
                    "x_fc_external_id": parent.x_fc_external_id,
                    "x_fc_previous_plan_code": parent.plan_id.x_fc_plan_code if parent.plan_id != order.plan_id
                    else parent.x_fc_previous_plan_code,
                    "x_fc_usage_closed_until": starts.date(),
                })

    def notify_handovers(self):
        """Tell the apps about the orders that took over their subscription since the last run: a
        downgrade applying at the end of the paid period (as Lago: ``subscription.terminated`` for
        the old plan, ``subscription.started`` for the new one) or a native renewal on the same plan
        (``subscription.updated``); a renewal a person cancelled took nothing over: the subscription
        ended (``subscription.terminated`` only). Once per hand-over; one failing order never stops the others."""
        orders = self.orders.search([("x_fc_successor_id", "!=", False), ("x_fc_handover_notified", "=", False),
                                     ("x_fc_terminated_at", "<=", fields.Datetime.now())])
        for order in orders:
            successor = order.x_fc_successor_id
            try:
                with self.env.cr.savepoint():
                    if successor.state != "cancel" and successor.plan_id == order.plan_id:
                        successor._fc_notify("subscription.updated")
                    else:
                        order._fc_notify("subscription.terminated")
                        if successor.state != "cancel":  # (a person cancelled it: the subscription ended)
                            successor._fc_notify("subscription.started")
                    order.x_fc_handover_notified = True
            except Exception:  # noqa: BLE001 — logged; the next run tries this order again
                _logger.exception("Could not notify the app that %s took over %s", successor.name, order.name)
        return orders

    # ------------------------------------------------------------------ plan changes (Lago)
    def change_plan(self, current, plan, values):
        """``POST /subscriptions`` on an existing subscription. Returns the order the API answers with.
        The current plan is a retry, unless a change to another plan is scheduled for the period end:
        it is then cancelled (the app stays on its plan). Another plan replaces any scheduled change."""
        scheduled = self._pending_successor(current)
        if scheduled.plan_id == plan or (plan == current.plan_id and not scheduled):
            return current  # a retry (of the scheduled downgrade, or on the current plan)
        if scheduled:
            self._cancel_pending_successor(current)
        if plan == current.plan_id:
            current._fc_notify("subscription.updated")  # no next plan any more
            return current
        if current._api_status() == "pending":
            return self._switch(current, plan, values)
        today = fields.Date.context_today(self.orders)
        shadow = current.x_fc_service_id._is_shadow()
        paid_ahead = not shadow and current.state == "sale" and bool(current.last_invoice_date) \
            and bool(current.next_invoice_date) and current.next_invoice_date > today
        if plan._fc_annual_base_fee() >= current.plan_id._fc_annual_base_fee():
            return self._upgrade(current, plan, values, credit=paid_ahead)
        if paid_ahead:
            return self._downgrade(current, plan, values)
        if shadow:
            return self._scheduled_downgrade(current, plan, values)
        return self._upgrade(current, plan, values, credit=False)  # nothing paid ahead: switch now

    def _switch(self, current, plan, values):
        """A subscription that has not started yet simply changes plan (nothing was billed)."""
        start = current.start_date
        self.terminate(current)
        return self.start(current.x_fc_service_id, current.x_fc_account_link_id, plan,
                          dict(values, start_date=start), previous=current)

    def _upgrade(self, current, plan, values, credit=True):
        """Lago upgrade: the current subscription ends now (its final usage billed), the new plan
        starts today, and its first invoice credits the unused part of the fee paid in advance."""
        now = fields.Datetime.now()
        unused = self._unused_paid_fee(current, now) if credit else None
        self.terminate(current, reason=self.env.ref("fusion_centralize_billing.close_reason_plan_change",
                                                    raise_if_not_found=False))
        new = self.start(current.x_fc_service_id, current.x_fc_account_link_id, plan,
                         dict(values, start_date=fields.Date.context_today(self.orders), subscription_at=None),
                         previous=current)
        if unused and not current.x_fc_service_id._is_shadow():
            self._credit(new, current, *unused)
        return new

    def _downgrade(self, current, plan, values):
        """Lago downgrade: the new plan starts when the paid period ends, as Odoo's renewal order."""
        start = current.next_invoice_date
        action = current.prepare_renewal_order()
        renewal = self.orders.browse(action["res_id"])
        recurring = renewal.order_line.filtered(lambda line: line.product_id.recurring_invoice)
        renewal.write({
            "plan_id": plan.id,
            "pricelist_id": current.x_fc_service_id._fc_pricelist(plan._fc_currency()).id,
            "start_date": start, "next_invoice_date": start,
            "order_line": [Command.unlink(line.id) for line in recurring]
            + [Command.create(plan._fc_base_fee_line_values())],
        })
        renewal.action_confirm()  # the current order becomes Renewed; the renewal carries the app's ids on
        current._fc_notify("subscription.updated")
        return current

    def _scheduled_downgrade(self, current, plan, values):
        """Shadow: the app downgrades at the end of its period; Odoo records the same, as drafts."""
        starts = current._fc_period()[1]
        current.write({"x_fc_terminated_at": datetime.combine(starts, time.min)})
        current.flush_recordset(["x_fc_terminated_at"])  # frees the external id first (unique index)
        new = self.start(current.x_fc_service_id, current.x_fc_account_link_id, plan,
                         dict(values, start_date=starts, subscription_at=None), previous=current, notify=False)
        current.write({"x_fc_successor_id": new.id})
        current._fc_notify("subscription.updated")
        return current

    def _unused_paid_fee(self, order, at):
        """(amount, first day, last day) of the recurring fee paid for the current period and not
        used at ``at``, prorated by days; None when nothing was paid ahead."""
        start, end = order.last_invoice_date, order.next_invoice_date
        recurring = order.order_line.filtered(lambda line: line.product_id.recurring_invoice and not line.x_fc_line_kind)
        paid = self._paid_fee(order, recurring, start)
        remaining, total = periods.unused_fraction(start, end, at)
        if not paid or not remaining:
            return None
        amount = money.round_money(money.to_decimal(paid) * remaining / total, order.currency_id.decimal_places)
        return amount, at.date(), end - timedelta(days=1)

    @staticmethod
    def _paid_fee(order, recurring, start):
        """The fee paid for the period that started on ``start``, net of its credit notes: each period's fee
        is invoiced once, in advance, so it is on the latest posted invoice of the ``recurring`` order
        lines, whatever day that invoice is dated (the recurring run may run late, a person may invoice
        early). Nothing when that invoice is older than the previous period (this one was never invoiced)."""
        lines = recurring.invoice_lines.filtered(lambda line: line.parent_state == "posted")
        invoices = lines.move_id.filtered(lambda move: move.move_type == "out_invoice")
        if not invoices:
            return 0
        latest = invoices.sorted(lambda move: (move.invoice_date, move.id))[-1]
        plan = order.plan_id
        if latest.invoice_date <= periods.add_period(start, plan.billing_period_unit, plan.billing_period_value, -1):
            return 0
        billed = lines.filtered(lambda line: latest in (line.move_id, line.move_id.reversed_entry_id))
        return sum(line.price_subtotal * (-1 if line.move_id.move_type == "out_refund" else 1) for line in billed)

    def _credit(self, new, current, amount, first_day, last_day):
        """The unused part of the old plan's fee as a credit line on the new subscription's first
        invoice (never more than that invoice's fee; the rest as a native credit note)."""
        product = self.env.ref("fusion_centralize_billing.product_plan_change_credit")
        taxes = current._fc_fee_lines().tax_ids
        label = self.env._("Unused %(plan)s from %(first)s to %(last)s",
                           plan=current.plan_id.name, first=first_day, last=last_day)
        fee = money.to_decimal(sum(new.order_line.filtered(lambda line: line.product_id.recurring_invoice)
                                   .mapped("price_subtotal")))
        on_invoice = min(amount, fee) if new.currency_id == current.currency_id else Decimal(0)
        if on_invoice:
            new.with_context(tracking_disable=True).order_line = [Command.create({
                "product_id": product.id, "name": label, "product_uom_qty": 1, "price_unit": -float(on_invoice),
                "tax_ids": [Command.set(taxes.ids)], "sequence": 1001,
                "x_fc_line_kind": "plan_credit", "x_fc_pending": True})]
        rest = amount - on_invoice
        if rest > 0:
            refund = self.env["account.move"].sudo().create({
                "move_type": "out_refund", "partner_id": current.partner_id.id, "currency_id": current.currency_id.id,
                "x_fc_service_id": current.x_fc_service_id.id, "invoice_origin": current.name,
                "x_fc_account_link_id": current.x_fc_account_link_id.id,
                "invoice_line_ids": [Command.create({"product_id": product.id, "name": label, "quantity": 1,
                                                     "price_unit": float(rest), "tax_ids": [Command.set(taxes.ids)]})],
            })
            refund.action_post()
