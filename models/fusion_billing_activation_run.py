import psycopg2.errors

from odoo import api, fields, models
from odoo.exceptions import AccessError

from ..services import activation
from ..services.activation import CONFIRMED, FAILED, NEVER_BILLED, STALE
from . import batch_jobs

# No "running" state: the run's row is not updated while workers record its orders (each line's
# foreign key locks it; in REPEATABLE READ an update of it by another worker would make them fail).
# Its progress is the count of its lines.
RUN_STATES = [("queued", "Queued"), ("done", "Done"), ("failed", "Refused or Stopped")]
# A cron worker's unit of work is also cut by --limit-time-cpu (60 s by default): after its 10 s
# budget (ir.cron MIN_TIME_PER_JOB) Odoo still calls a job that reports work left up to 9 more
# times, one batch each. Batches of 50 (about 2 s) keep that unit well inside the limit.
BATCH_SIZE = 50
CRON = "fusion_centralize_billing.ir_cron_activate_subscriptions"
# The drafts of a service a run has not handled yet (run 0: all of them, what a new run will handle).
UNHANDLED = """
    FROM sale_order o
   WHERE o.x_fc_service_id = %(service)s AND o.is_subscription AND o.state IN ('draft', 'sent')
     AND o.x_fc_terminated_at IS NULL
     AND NOT EXISTS (SELECT 1 FROM fusion_billing_activation_run_line l WHERE l.run_id = %(run)s AND l.order_id = o.id)
"""


class FusionBillingActivationRun(models.Model):
    """One press of *Activate Subscriptions*: queued by the button, run by the background job
    (:meth:`_cron_run_queued`) in batches committed one by one, each draft claimed with
    ``SKIP LOCKED`` and recorded once per run (a line, unique per run and order) in the same
    transaction as its confirmation and webhook: a run interrupted by a killed worker resumes where
    its last committed batch ended, and no order is confirmed or announced twice. Every field is
    written by code: users can only read runs."""

    _name = "fusion.billing.activation.run"
    _description = "Subscription Activation Run"
    _order = "id desc"
    _check_company_auto = True

    service_id = fields.Many2one("fusion.billing.service", required=True, readonly=True, index=True,
                                 ondelete="cascade", check_company=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    user_id = fields.Many2one("res.users", string="Requested by", required=True, readonly=True)
    state = fields.Selection(RUN_STATES, required=True, default="queued", readonly=True, index=True)
    draft_count = fields.Integer(string="Drafts", readonly=True, help="Drafts to look at when the run was queued.")
    handled_count = fields.Integer(string="Handled", compute="_compute_handled_count")
    finished_at = fields.Datetime(readonly=True)
    error = fields.Text(readonly=True, help="Why the job refused the run.")
    line_ids = fields.One2many("fusion.billing.activation.run.line", "run_id", string="Orders", readonly=True)

    # One queued or running activation per service: a second press (even a concurrent one) adds none.
    _one_open_per_service = models.UniqueIndex(
        "(service_id) WHERE state = 'queued'", "An activation of this service is already queued.")

    def _compute_handled_count(self):
        counts = dict(self.env["fusion.billing.activation.run.line"].sudo()._read_group(
            [("run_id", "in", self.ids)], ["run_id"], ["__count"]))
        for run in self:
            run.handled_count = counts.get(run, 0)

    # ------------------------------------------------------------------ queueing (the service's button)
    @api.model
    def _queue(self, service):
        """Queue an activation of ``service`` for the current user (checked by the caller, and again
        by the job). Returns ``(run, created)``: else the run already queued or running (empty when
        it was queued by a concurrent press this transaction cannot see yet)."""
        Run = self.sudo()
        open_run = Run.search([("service_id", "=", service.id), ("state", "=", "queued")], limit=1)
        if open_run:
            return open_run, False
        self.env.flush_all()
        self.env.cr.execute(f"SELECT count(*) {UNHANDLED}", {"service": service.id, "run": 0})  # noqa: S608
        drafts = self.env.cr.fetchone()[0]
        try:
            # The unique index decides between concurrent presses; not logged: an expected conflict.
            with self.env.cr.savepoint(flush=False):
                self.env.cr.execute("""
                    INSERT INTO fusion_billing_activation_run (service_id, company_id, user_id, state, draft_count,
                                                               create_uid, create_date, write_uid, write_date)
                    VALUES (%(service)s, %(company)s, %(user)s, 'queued', %(drafts)s,
                            %(user)s, now() AT TIME ZONE 'UTC', %(user)s, now() AT TIME ZONE 'UTC')
                    RETURNING id""", {"service": service.id, "company": service.company_id.id,
                                      "user": self.env.uid, "drafts": drafts}, log_exceptions=False)
                run = Run.browse(self.env.cr.fetchone()[0])
        except psycopg2.errors.UniqueViolation:
            # A concurrent press queued one first (its row is not in this transaction's snapshot).
            return Run.search([("service_id", "=", service.id), ("state", "=", "queued")], limit=1), False
        self.env.ref(CRON).sudo()._trigger()
        return run, True

    # ------------------------------------------------------------------ the background job
    @api.model
    def _cron_run_queued(self, batch_size=BATCH_SIZE):
        """Run the queued (and resume the interrupted) activations. Safe to run in several workers at
        once: each draft is claimed by one of them; the last to finish posts the result."""
        for run in self.sudo().search([("state", "=", "queued")], order="id"):
            if not run._run(batch_size):
                return  # out of time: Odoo runs the job again at once

    def _run(self, batch_size):
        """Work on this run until its drafts are all handled; False when the job ran out of time."""
        self.ensure_one()
        requester = self.user_id
        env = self.env(user=requester, su=False, context=dict(
            self.env.context, allowed_company_ids=(self.company_id | requester.company_id).ids))
        worker = activation.Activation(env, self.service_id)
        retries = 0
        while True:
            refusal = self._refusal()  # checked again before each batch: a switch back to shadow stops it
            if refusal:
                self._finish(refusal)
                return True
            order_ids = self._claim(batch_size)
            if not order_ids:
                break
            try:
                lines = [dict(zip(("outcome", "reason", "with_token", "in_trial"), worker.handle(order)),
                              run_id=self.id, order_id=order.id)
                         for order in env["sale.order"].browse(order_ids)]
                self.env["fusion.billing.activation.run.line"].sudo().create(lines)
                self.env.flush_all()
            except batch_jobs.CONFLICTS as error:
                self.env.invalidate_all()
                retries = batch_jobs.retry_after_conflict(self.env, error, retries)
                continue
            retries = 0
            if not batch_jobs.commit_batch(self.env, len(order_ids)):
                return False
            self.env.invalidate_all()  # 25,000 orders: keep the cache to one batch
        if self._pending_count():  # claimed by a concurrent worker that has not committed: it finishes
            return True
        self._finish()
        return True

    def _claim(self, batch_size):
        """The next drafts of this run's service this run has not handled, locked for this worker."""
        return batch_jobs.claim(
            self.env, f"SELECT o.id {UNHANDLED} ORDER BY o.id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED",  # noqa: S608
            {"service": self.service_id.id, "run": self.id, "limit": batch_size})

    def _pending_count(self):
        """Drafts not handled yet, locked or not (a concurrent worker's uncommitted batch counts)."""
        self.env.cr.execute(f"SELECT count(*) {UNHANDLED}", {"service": self.service_id.id, "run": self.id})  # noqa: S608
        return self.env.cr.fetchone()[0]

    def _refusal(self):
        """Why the job must not (or no longer) activate: checked when it runs, whoever queued it."""
        requester, service = self.user_id, self.service_id
        try:
            if not requester._is_superuser():  # (the superuser, archived by Odoo, is code: odoo shell, scripts)
                if not requester.active:
                    raise AccessError(self.env._("%s is archived.", requester.name))
                service.with_user(requester)._fc_check_manager()
        except AccessError:
            return self.env._("Refused: only a Fusion Billing administrator of %(service)s may activate its "
                              "subscriptions; %(user)s, who asked, is not (now). Nothing was confirmed.",
                              service=service.name, user=requester.name)
        if service.billing_mode != "live":
            return self.env._("Stopped: %s was switched back to shadow before the activation ended. Nothing more "
                              "was confirmed.", service.name)
        return None

    def _finish(self, refusal=None):
        """Mark the run done (or refused) and post its outcome on the service, once: whoever holds
        the run's row finishes it; a concurrent worker finds it finished."""
        if not batch_jobs.claim(self.env, """
                SELECT id FROM fusion_billing_activation_run WHERE id = %s AND state = 'queued'
                FOR UPDATE SKIP LOCKED""", [self.id]):
            return
        self.invalidate_recordset()
        self.write({"state": "failed" if refusal else "done", "error": refusal or False,
                    "finished_at": fields.Datetime.now()})
        service = self.service_id
        body = self._summary() if not refusal else refusal + (" " + self._summary() if self.line_ids else "")
        service.sudo().message_post(body=body, author_id=self.user_id.partner_id.id)
        batch_jobs.commit(self.env)

    def _summary(self):
        """Today's activation message: counts, what stays a draft and why, and the failures."""
        Line = self.env["fusion.billing.activation.run.line"].sudo()
        run = [("run_id", "=", self.id)]
        counts = dict(Line._read_group(run, ["outcome"], ["__count"]))
        confirmed = run + [("outcome", "=", CONFIRMED)]
        left, stale, failed = counts.get(NEVER_BILLED, 0), counts.get(STALE, 0), counts.get(FAILED, 0)
        not_billed = self.env._(
            " %(count)s left as drafts: Stripe does not bill them (incomplete: their first payment never went "
            "through), so Odoo never will.", count=left) if left else ""
        not_billed += self.env._(
            " %(count)s left as drafts: their Date of Next Invoice has passed, so Stripe has billed them since "
            "the import (%(names)s): import again, then activate again.", count=stale,
            names=", ".join(Line.search(run + [("outcome", "=", STALE)], limit=20).order_id.mapped("name"))
            + (", …" if stale > 20 else "")) if stale else ""
        errors = [f"{line.order_id.name}: {line.reason}"
                  for line in Line.search(run + [("outcome", "=", FAILED)], limit=20)]
        return self.env._(
            "Activation by %(user)s: %(confirmed)s subscriptions confirmed (%(trials)s in trial, first invoiced "
            "when their trial ends; %(token)s with a saved payment method), %(failed)s failed.%(not_billed)s"
            "%(errors)s", user=self.user_id.name, confirmed=counts.get(CONFIRMED, 0),
            trials=Line.search_count(confirmed + [("in_trial", "=", True)]),
            token=Line.search_count(confirmed + [("with_token", "=", True)]),
            failed=failed, not_billed=not_billed, errors=("\n" + "\n".join(errors)) if errors else "") + (
            self.env._(" All %s failures are listed under Activation.", failed) if failed > 20 else "")
