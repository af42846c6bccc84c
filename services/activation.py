"""Activation at cutover: confirm a live service's imported draft subscriptions, one order at a time.

Used by the background job of ``fusion.billing.activation.run`` (the *Activate Subscriptions*
button only queues a run): the job claims drafts in batches and hands each to :meth:`Activation.handle`,
which decides what happens to it and does it inside a savepoint of its own, so that one bad order
is reported and the others still go through.
"""
import logging

from odoo import Command, fields
from odoo.exceptions import UserError, ValidationError

from ..models import batch_jobs

_logger = logging.getLogger(__name__)

# What became of one draft (the run's lines keep one per order and run).
CONFIRMED, FAILED, NEVER_BILLED, STALE = "confirmed", "failed", "never_billed", "stale"
OUTCOMES = [(CONFIRMED, "Confirmed"), (FAILED, "Failed"), (NEVER_BILLED, "Left: never billed by the app"),
            (STALE, "Left: imported before its last renewal")]


class Activation:
    """Activate drafts of ``service`` on behalf of ``env.user`` (the person who pressed the button,
    checked again by the job): their own rights and record rules; the payment token search, like
    any code reading a customer's saved cards, is done as superuser."""

    def __init__(self, env, service):
        self.env = env
        self.service = service.with_env(env)
        self.today = fields.Date.context_today(service.with_env(env))

    def handle(self, order):
        """Return ``(outcome, reason, with_token, in_trial)`` for the draft ``order`` (locked by the
        caller). Drafts the app never billed (``incomplete``) and drafts whose Date of Next Invoice
        has passed (the app billed them since the import) are left as they are."""
        order = order.with_env(self.env)
        if order._fc_never_billed():
            return NEVER_BILLED, "", False, False
        if order._fc_stale_import():
            return STALE, "", False, False
        try:
            with self.env.cr.savepoint():
                with_token = self._attach_token(order)
                plan = order.plan_id
                if plan.x_fc_product_id and plan.x_fc_product_id not in order.order_line.product_id:
                    order.order_line = [Command.create(plan._fc_base_fee_line_values())]  # older imports
                order._fc_activate()
                order._fc_notify("subscription.updated")
        except batch_jobs.CONFLICTS:
            raise  # another worker's commit: the whole batch is claimed again
        except (UserError, ValidationError) as error:
            self.env.invalidate_all()
            return FAILED, str(error), False, False
        except Exception as error:  # noqa: BLE001 — a scheduled job isolates a bad record
            self.env.invalidate_all()
            _logger.exception("Activation of %s failed", order.name)
            return FAILED, f"{type(error).__name__}: {error}", False, False
        return CONFIRMED, "", with_token, bool(order.x_fc_trial_end and order.x_fc_trial_end > self.today)

    def _attach_token(self, order):
        token = self.env["payment.token"].sudo().search([
            ("partner_id", "child_of", order.partner_id.commercial_partner_id.id), ("active", "=", True)], limit=1)
        if token:
            order.payment_token_id = token
        return bool(token)
