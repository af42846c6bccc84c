"""The billing cycle: usage periods closed onto Odoo's native recurring invoicing.

Odoo (``sale_subscription``) invoices a subscription in advance on its *Date of Next Invoice*,
then moves that date one period on, charges the saved card, e-mails the invoice and handles
failed payments and Automatic Closing (tests/ENTERPRISE_CHECKLIST.md). Usage is billed in
arrears on that same invoice, as Lago puts the fee in advance and the last period's usage in
arrears on one invoice per subscription:

* Odoo's recurring run is hooked (``sale.order._create_recurring_invoice``): before invoicing,
  it closes the usage periods of the subscriptions it is about to invoice (the periods that end
  on their invoice date: usage periods follow ``next_invoice_date``). Closing rates the period
  and puts each charge's amount on a one-shot order line of the subscription, which the native
  invoice picks up. The hook adds lines; it creates no invoice.
* Our own job (``_cron_close_usage_periods``) closes what the native run never invoices: shadow
  and not-yet-activated subscriptions (recorded only), a terminated subscription's final period
  (its standalone invoice is posted, then charged and e-mailed the native way by
  ``deliver_final_invoices``), and subscriptions set aside by an earlier failure.
* A subscription whose close fails is set aside with its reason (*Needs attention*); the rest of
  its batch goes on and a later run retries it. Batches are claimed with ``SKIP LOCKED`` and
  committed one at a time, so several workers share a month end and a crash resumes.
"""
import logging
from datetime import datetime, time, timedelta
from decimal import Decimal

from odoo import Command, fields

from ..models import batch_jobs

_logger = logging.getLogger(__name__)

RUNNING = ("3_progress", "4_paused")
BATCH_SIZE = 200
# A subscription set aside this many times in a row is no longer retried by our job (about a day of
# its hourly runs): it stays in Needs Attention until someone fixes it and presses Retry Billing.
MAX_BILLING_ATTEMPTS = 24
CLEARED = {"x_fc_billing_issue": False, "x_fc_billing_issue_at": False, "x_fc_billing_attempts": 0}

# An order's usage rides on its successor's invoice when the successor runs and bills in the same
# currency (``sale.order._fc_usage_carrier``, the same rule in Python); otherwise it is its own.
CARRIED_BY_SUCCESSOR = """EXISTS (
        SELECT 1 FROM sale_order successor
         WHERE successor.id = so.x_fc_successor_id AND successor.state = 'sale'
           AND successor.subscription_state IN ('3_progress', '4_paused')
           AND successor.currency_id = so.currency_id)"""

# Subscriptions the native run invoices today, and what it will invoice with them: their own due
# usage up to their invoice date, and the final usage of the orders they renewed.
NATIVE_CLAIM = f"""
    WITH invoiced AS (
        SELECT id FROM sale_order
         WHERE is_subscription AND state = 'sale' AND subscription_state = '3_progress'
           AND NOT COALESCE(payment_exception, false) AND next_invoice_date <= %(today)s
           AND x_fc_service_id = ANY(%(live)s))
    SELECT so.id FROM sale_order so
     WHERE so.x_fc_usage_due_date <= %(today)s AND so.x_fc_service_id = ANY(%(live)s)
       AND NOT so.id = ANY(%(skip)s)
       AND ((so.id IN (SELECT id FROM invoiced) AND so.x_fc_usage_due_date <= so.next_invoice_date)
            OR (so.x_fc_successor_id IN (SELECT id FROM invoiced) AND {CARRIED_BY_SUCCESSOR}))
     ORDER BY so.x_fc_usage_due_date, so.id
     LIMIT %(limit)s FOR NO KEY UPDATE OF so SKIP LOCKED"""

# Everything else that is due: shadow services, drafts, final periods not carried by a renewal
# (none, or one that does not run, or bills in another currency), and subscriptions set aside by
# an earlier run.
OTHER_CLAIM = f"""
    SELECT so.id FROM sale_order so JOIN fusion_billing_service service ON service.id = so.x_fc_service_id
     WHERE so.x_fc_usage_due_date <= %(today)s AND NOT so.id = ANY(%(skip)s)
       AND COALESCE(so.x_fc_billing_attempts, 0) < %(max_attempts)s
       AND (service.billing_mode = 'shadow' OR so.state != 'sale' OR so.x_fc_billing_issue_at IS NOT NULL
            OR (so.x_fc_terminated_at <= %(now)s AND NOT {CARRIED_BY_SUCCESSOR}))
     ORDER BY so.x_fc_usage_due_date, so.partner_id, so.id
     LIMIT %(limit)s FOR NO KEY UPDATE OF so SKIP LOCKED"""


class BillingCycle:
    """Closes usage periods for an environment's subscriptions (plain values in, records out)."""

    def __init__(self, env):
        self.env = env
        self.orders = env["sale.order"]

    # ------------------------------------------------------------------ entry points
    def before_recurring_invoicing(self, orders, batch_size=None):
        """Odoo's recurring run is about to invoice ``orders`` (empty: every subscription due today).
        Close their due usage onto order lines, all of it: the run invoices right after, so nothing
        due may be left for later. Batches are committed without a time budget of ours (the job
        is Odoo's; its own time limit still applies, and a killed run resumes from the last batch)."""
        today = fields.Date.context_today(self.orders)
        until = self._native_until(today)
        if orders:
            live = orders.filtered(lambda o: o.x_fc_service_id and not o.x_fc_service_id._is_shadow())
            todo = live | self.orders.search([("x_fc_successor_id", "in", live.ids)])
            self._isolated(todo.filtered(lambda o: o.x_fc_usage_due_date and o.x_fc_usage_due_date <= until(o)),
                           lambda batch: self._close(batch, until))
            return True
        live = self.env["fusion.billing.service"].search([("billing_mode", "=", "live")]).ids
        if not live:
            return True
        return self._claim_and_close(NATIVE_CLAIM, {"today": today, "live": live}, until,
                                     batch_size or BATCH_SIZE, budget=False)

    def close_outside_native_run(self, batch_size=BATCH_SIZE):
        """Close what the native run does not invoice (see the module docstring). False when out of time."""
        today = fields.Date.context_today(self.orders)
        return self._claim_and_close(OTHER_CLAIM, {"today": today, "now": fields.Datetime.now(),
                                                   "max_attempts": MAX_BILLING_ATTEMPTS},
                                     lambda _order: today, batch_size)

    def close_now(self, orders, bill=True):
        """Close these subscriptions' due periods now, including a terminated one's final period
        (Lago bills a terminated subscription at once). ``bill=False`` records without billing."""
        today = fields.Date.context_today(self.orders)
        self._isolated(orders.filtered("x_fc_usage_due_date"),
                       lambda batch: self._close(batch, lambda _order: today, bill=bill))

    def close_skipped(self, order, until):
        """Activation moves the close on to ``until``: the usage periods before it were the app's to
        bill (or a trial's). Their open rows are closed as recorded (rated, never billed), so that no
        close bills them later and events sent for them afterwards are late. A few statements
        whatever the number of periods skipped (no row is created for them)."""
        usage_model = self.env["fusion.billing.usage"]
        usage_model._fc_fold(order.ids)
        rows = usage_model._fc_close_before(order.id, until)
        charges = {charge.metric_id.id: charge for charge in order._fc_charges()}
        usage_model._fc_record_amounts({
            usage_id: charges[metric_id]._rate(quantity, events_count=events).amount if metric_id in charges
            else Decimal(0) for usage_id, metric_id, quantity, events in rows}, state="closed")

    # ------------------------------------------------------------------ claims and isolation
    @staticmethod
    def _native_until(today):
        """A subscription invoiced natively closes its usage up to the invoice being made (its next
        invoice date); a renewed one closes up to today (its final period ends at the renewal)."""
        def until(order):
            if order.subscription_state in RUNNING and order.next_invoice_date:
                return min(today, order.next_invoice_date)
            return today
        return until

    def _claim_and_close(self, query, params, until, batch_size, budget=True):
        """Claim and close batches until none is left; False when the job's time budget ran out
        (``budget=False``: no budget of ours, every batch is closed now)."""
        skip, conflicts = [], 0
        while True:
            orders = self.orders.browse(batch_jobs.claim(self.env, query, dict(params, skip=skip, limit=batch_size)))
            if not orders:
                return True
            try:
                failed = self._isolated(orders, lambda batch: self._close(batch, until))
                if not budget:
                    batch_jobs.commit(self.env)
                elif not batch_jobs.commit_batch(self.env, len(orders)):
                    return False  # out of time: the job runs again at once and resumes here
                skip += failed.ids  # retried by a later run, not again in this one
                conflicts = 0
            except batch_jobs.CONFLICTS as error:  # e.g. another worker invoicing the same new customer
                conflicts = batch_jobs.retry_after_conflict(self.env, error, conflicts)
                _logger.warning("Billing cycle: batch rolled back after a conflict with another worker, "
                                "claiming it again: %s", str(error).strip())

    def _isolated(self, orders, work, clear=True):
        """``work(orders)`` in a savepoint; should it fail, each order alone, and the ones that still
        fail are set aside with their reason while the others go on. Returns the set-aside orders.
        Conflicts with other workers are not failures: they roll the batch back (caller retries).
        ``clear=False``: work that is only part of billing (the fold job) sets aside, never clears
        an earlier failure's reason and count (only a close that succeeds does)."""
        if not orders:
            return orders
        try:
            with self.env.cr.savepoint():
                work(orders)
        except batch_jobs.CONFLICTS:
            raise
        except Exception:  # noqa: BLE001 — isolated below, order by order
            failed = {}
            for order in orders:
                try:
                    with self.env.cr.savepoint():
                        work(order)
                except batch_jobs.CONFLICTS:
                    raise
                except Exception as error:  # noqa: BLE001 — the reason is kept on the subscription
                    failed[order] = error
            self._set_aside(failed)
            done = orders - self.orders.browse([order.id for order in failed])
            if clear:
                done.filtered("x_fc_billing_issue_at").sudo().write(CLEARED)
            return self.orders.browse([order.id for order in failed])
        if clear:
            orders.filtered("x_fc_billing_issue_at").sudo().write(CLEARED)
        return self.orders

    def _set_aside(self, failed):
        now = fields.Datetime.now()
        for order, error in failed.items():
            reason = str(error.args[0]) if getattr(error, "args", None) and isinstance(error.args[0], str) else str(error)
            reason = f"{type(error).__name__}: {reason.strip()}"[:2000]
            _logger.warning("Billing cycle: %s set aside: %s", order.name, reason)
            order.sudo().with_context(tracking_disable=True).write({
                "x_fc_billing_issue": reason, "x_fc_billing_issue_at": now,
                "x_fc_billing_attempts": order.x_fc_billing_attempts + 1})

    # ------------------------------------------------------------------ the close
    def _close(self, orders, until, bill=True):
        """Close the due periods of ``orders`` (``until(order)``: the last day to close), oldest first,
        all orders together each round; live ones get their usage on order lines, and a terminated
        one its standalone final invoice. Shadow and draft subscriptions are only recorded."""
        usage_model = self.env["fusion.billing.usage"]
        usage_model._fc_fold(orders.ids)
        due = orders
        while due := due.filtered(lambda o: o.x_fc_usage_due_date and o.x_fc_usage_due_date <= until(o)):
            bounds = {order: order._fc_period(order.x_fc_usage_closed_until or order._fc_start()) for order in due}
            charges = {order: order._fc_charges() for order in due}
            last = [order.id for order in due if order.x_fc_terminated_at
                    and datetime.combine(bounds[order][1], time.min) >= order.x_fc_terminated_at]
            rows = usage_model._fc_close_rows({order.id: bounds[order] for order in due},
                                              {order.id: charges[order].metric_id.ids for order in due}, final_ids=last)
            amounts, billable = {}, []
            for order in due:
                found = rows.get(order.id, {})
                for charge in charges[order]:
                    if charge.metric_id.id not in found:
                        continue  # already closed (a replayed batch)
                    usage_id, quantity, events = found[charge.metric_id.id]
                    rating = charge._rate(quantity, events_count=events)
                    amounts[usage_id] = rating.amount
                    if bill and rating.amount_minor and order._fc_bills_usage():
                        billable.append((order, charge, usage_id, rating, bounds[order]))
                for usage_id, _quantity, _events in found.values():
                    amounts.setdefault(usage_id, Decimal(0))  # a metric no charge prices
            usage_model._fc_record_amounts(amounts, state="closed")
            self._add_usage_lines(billable)
            for end in {end for _start, end in bounds.values()}:
                due.filtered(lambda o: bounds[o][1] == end).write({"x_fc_usage_closed_until": end})
        return self._invoice_final_periods(orders) if bill else self.env["account.move"]

    def _add_usage_lines(self, billable):
        """Put each rated amount on its subscription (or on the renewal that carries it on): one
        line per charge, reused period after period, pending until an invoice carrying it posts."""
        if not billable:
            return
        # Analytic defaults are looked up once per batch (context fc_distribution_memo), not per line:
        # when the lines are created, and when the orders' totals read them.
        memo = self.env.context.get("fc_distribution_memo", {})
        line_model = self.env["sale.order.line"].with_context(
            tracking_disable=True, sale_no_log_for_new_lines=True, fc_distribution_memo=memo)
        carriers = {order: order._fc_usage_carrier() for order in {row[0] for row in billable}}
        products = {charge: charge._fc_billing_product() for charge in {row[1] for row in billable}}
        taken, creates, writes, usage_of = set(), [], [], {}
        for order, charge, usage_id, rating, (start, end) in billable:
            carrier, product = carriers[order], products[charge]
            values = {"name": charge._fc_invoice_label(rating, start, order._fc_last_day(end)),
                      "price_unit": float(rating.amount), "x_fc_usage_id": usage_id, "x_fc_pending": True}
            line = next((line for line in carrier.order_line
                         if line.x_fc_line_kind == "usage" and line.x_fc_charge_id == charge and not line.x_fc_pending
                         and line.product_id == product and line.id not in taken), None)
            if line:
                taken.add(line.id)
                writes.append((line, values))
                usage_of[usage_id] = line
            else:
                creates.append((usage_id, dict(values, order_id=carrier.id, product_id=product.id, product_uom_qty=1,
                                               sequence=1000, x_fc_line_kind="usage", x_fc_charge_id=charge.id)))
        for line, values in writes:
            line.with_context(line_model.env.context).write(values)
        created = line_model.create([values for _usage_id, values in creates])
        usage_of.update(zip((usage_id for usage_id, _values in creates), created))
        self.env["fusion.billing.usage"]._fc_record_amounts(
            dict.fromkeys(usage_of), state="closed", sale_lines={usage_id: line.id for usage_id, line in usage_of.items()})
        # The lines and their invoices record the close: the orders' totals are recomputed without
        # logging a tracked total change on every subscription each period.
        orders = self.orders.browse({carrier.id for carrier in carriers.values()}).with_context(
            tracking_disable=True, fc_distribution_memo=memo)
        # Odoo's totals compute reads each order's lines apart (through filtered(), which keeps no
        # prefetch): their taxes are fetched here for the whole batch in one query, not one per order.
        orders.order_line.fetch(["tax_ids"])
        orders._recompute_recordset(orders._fc_tracked_computed_fields())

    # ------------------------------------------------------------------ final periods
    def _invoice_final_periods(self, orders):
        """A terminated subscription's final usage (nothing carries it on) gets its own invoice,
        posted now; ``deliver_final_invoices`` then charges and e-mails it the native way."""
        now = fields.Datetime.now()
        awaiting = lambda line: line.x_fc_line_kind and line.x_fc_pending and line.qty_to_invoice > 0  # noqa: E731 (not on a draft)
        finals = orders.filtered(lambda o: o.x_fc_terminated_at and o.x_fc_terminated_at <= now
                                 and o._fc_bills_usage() and o._fc_usage_carrier() == o
                                 and not o.x_fc_usage_due_date
                                 and o.order_line.filtered(awaiting))
        if not finals:
            return self.env["account.move"]
        values = []
        for order in finals:
            invoice = order._prepare_invoice()
            invoice.update(
                invoice_date=fields.Date.context_today(order),
                invoice_line_ids=[Command.create(line._prepare_invoice_line())
                                  for line in order.order_line.filtered(awaiting)],
                x_fc_delivery_state="pending")
            values.append(invoice)
        moves = self.env["account.move"].sudo().with_context(mail_create_nolog=True).create(values)
        # Only credits left to bill (e.g. a plan change's credit, the new plan ended before its first
        # invoice): a credit note, as Odoo's own final invoicing turns a negative invoice into one.
        moves.filtered(lambda m: m.currency_id.compare_amounts(m.amount_total, 0) < 0).action_switch_move_type()
        moves.action_post()
        return moves

    def deliver_final_invoices(self, batch_size=50):
        """Charge posted final invoices to the subscription's saved card and e-mail them, as Odoo's
        recurring run does for its own invoices. Each batch is claimed by flipping its state to
        *charging* and committing first, so no row stays locked during the card network call; an
        invoice left *charging* by a crash is listed for someone to check the payment."""
        while True:
            self.env.flush_all()
            self.env.cr.execute("""
                UPDATE account_move SET x_fc_delivery_state = 'charging'
                 WHERE id IN (SELECT id FROM account_move WHERE x_fc_delivery_state = 'pending'
                               ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
             RETURNING id""", [batch_size])
            moves = self.env["account.move"].browse(sorted(row[0] for row in self.env.cr.fetchall()))
            moves.invalidate_recordset(["x_fc_delivery_state"])
            if not moves:
                return True
            batch_jobs.commit(self.env)  # claimed (charging): no row stays locked during the card call
            for move in moves:
                self._deliver(move.sudo())
                batch_jobs.commit(self.env)
            # Out of time only once the claimed batch is delivered: none is left "charging" unsent.
            if not batch_jobs.commit_batch(self.env, len(moves)):
                return False

    def _deliver(self, move):
        order = move.invoice_line_ids.sale_line_ids.order_id[:1]
        token = order.payment_token_id
        state = "done"
        if token and move.move_type == "out_invoice" and move.currency_id.compare_amounts(move.amount_residual, 0) > 0:
            transaction_model = self.env["payment.transaction"].sudo()
            try:
                with self.env.cr.savepoint():
                    tx = transaction_model.create({
                        "provider_id": token.provider_id.id, "payment_method_id": token.payment_method_id.id,
                        "reference": transaction_model._compute_reference(token.provider_id.code, prefix=move.name),
                        "amount": move.amount_residual, "currency_id": move.currency_id.id,
                        "partner_id": move.partner_id.id, "token_id": token.id, "operation": "offline",
                        "invoice_ids": [Command.set(move.ids)],
                    })
                    tx._charge_with_token()
            except Exception:  # noqa: BLE001 — outcome unknown: left "charging" for someone to check
                _logger.exception("Billing cycle: charging final invoice %s failed", move.name)
                move.message_post(body=self.env._("Charging the saved payment method failed with an error: "
                                                  "check the payment with the provider before charging again."))
                return
            if tx.state == "done":
                tx._post_process()
            elif tx.state not in ("pending", "authorized"):
                state = "failed"
                move.message_post(body=self.env._("The saved payment method was declined: %s", tx.state_message or ""))
        try:
            with self.env.cr.savepoint():
                self.env["account.move.send"]._generate_and_send_invoices(move, from_cron=True)
        except Exception as error:  # noqa: BLE001 — the invoice stays posted; sending is reported on it
            move.message_post(body=self.env._("The invoice could not be sent: %s", error))
        move.x_fc_delivery_state = state


def last_served_day(terminated_at, period_end):
    """Last day of a period served before ``terminated_at`` (a datetime, or None)."""
    end = datetime.combine(period_end, time.min)
    if terminated_at and terminated_at < end:
        end = terminated_at
    return (end - timedelta(microseconds=1)).date()
