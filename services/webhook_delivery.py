"""Webhook delivery: claim, send outside any lock, record each outcome on its own.

A run repeatedly:

1. picks the services that have a due webhook, fairly (the one served least in this run first;
   a service whose receiver just failed waits for its next run), one slot per service and at most
   ``PARALLEL_SERVICES`` slots;
2. claims the oldest due row of each picked service with ``FOR UPDATE SKIP LOCKED`` (never a row
   held behind an older one about the same object), marks it *sending* (its attempt counted, its
   lease set) and commits, so no lock is held while sending;
3. sends each claimed row in a thread (one request per service at a time, services in parallel),
   with one deadline of ``SEND_TIMEOUT_SECONDS`` for the whole exchange, through ``core.outbound``
   (URL checked again after DNS, at most a few KiB of the answer read);
4. records each row's outcome as soon as it is known and commits it on its own (a delivered one
   first, by a single UPDATE of the row: nothing else rides on its commit), even when something
   in the run raised while sends were in flight.

So an unreachable receiver holds one slot for at most ``SEND_TIMEOUT_SECONDS`` and never delays
another service; a row that cannot even be prepared or sent (bad data) fails alone; a delivered
row is committed as sent before anything else happens and is never claimed again. A row whose
worker died after marking it *sending* is claimed again when its lease expires (the receiver
deduplicates on ``X-Lago-Unique-Key``, identical on every attempt).
"""
import logging
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import timedelta

from odoo import fields

from ..core import outbound, signing
from ..models import batch_jobs

_logger = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 10       # DNS + connect + TLS + request + answer, per webhook
LEASE = timedelta(minutes=10)  # a row marked sending by a worker that died is claimed again after this
PARALLEL_SERVICES = 4          # receivers called at once (one request per service at a time)
RUN_SECONDS = 45               # no new claim after this (the job runs every minute)
LOOPBACK_PARAM = "fusion_billing.webhook_allow_loopback"  # tests only: http and 127.0.0.1 allowed

# Due rows of services that may send: live, a URL and a signing secret (no empty-key signature).
_DUE = """
      FROM fusion_billing_webhook w
      JOIN fusion_billing_service s ON s.id = w.service_id
     WHERE w.state IN ('pending', 'retrying', 'sending') AND w.next_attempt_at <= %(now)s
       AND s.active AND s.billing_mode = 'live'
       AND COALESCE(s.webhook_url, '') != '' AND COALESCE(s.webhook_secret, '') != ''
       AND NOT EXISTS (SELECT 1 FROM fusion_billing_webhook older
                        WHERE older.object_ref = w.object_ref AND older.service_id = w.service_id
                          AND older.id < w.id AND older.state IN ('pending', 'retrying', 'sending'))
"""


def allow_loopback(env):
    return bool(env["ir.config_parameter"].sudo().get_param(LOOPBACK_PARAM))


class WebhookDelivery:
    """One delivery run on ``env`` (the cron job's; commits per claim and per outcome)."""

    def __init__(self, env):
        self.env = env(su=True)
        self.Webhook = self.env["fusion.billing.webhook"]
        self.served = Counter()        # service id → rows sent for it in this run
        self.failed_services = set()   # services whose receiver failed in this run: next run
        self.deadline = time.monotonic() + RUN_SECONDS
        self.loopback = allow_loopback(self.env)

    def run(self):
        """Deliver due webhooks until none is left or the run's time is up; returns rows attempted.

        Whatever raises in the run (a claim, a commit), the outcome of every send already started
        is still recorded (``finally``): a delivered row is never left *sending*, to be sent again
        when its lease expires."""
        inflight = {}  # future → (webhook, service id)
        attempted = 0
        with ThreadPoolExecutor(PARALLEL_SERVICES, thread_name_prefix="fusion-billing-webhook") as pool:
            try:
                while True:
                    free = PARALLEL_SERVICES - len(inflight)
                    if free and time.monotonic() < self.deadline:
                        busy = {service_id for _webhook, service_id in inflight.values()}
                        for webhook in self._claim(self._pick_services(busy, free)):
                            inflight[pool.submit(self._send, *self._request(webhook))] = (webhook, webhook.service_id.id)
                            attempted += 1
                    if not inflight:
                        if time.monotonic() >= self.deadline:
                            _logger.info("Webhook delivery: out of time after %s webhooks; the next run continues",
                                         attempted)
                        return attempted
                    done, _pending = wait(inflight, return_when=FIRST_COMPLETED)
                    self._record_completed(inflight, done)
            finally:
                if inflight:  # something raised with sends in flight: their outcomes are recorded all the same
                    self._rollback()
                    self._record_completed(inflight, wait(inflight).done)

    # ------------------------------------------------------------------ claim
    def _pick_services(self, busy, slots):
        """Up to ``slots`` services with a due row, least served in this run first."""
        self.env.flush_all()
        self.env.cr.execute(f"SELECT w.service_id, MIN(w.id) {_DUE} GROUP BY w.service_id",
                            {"now": fields.Datetime.now()})
        due = [(self.served[service_id], oldest, service_id) for service_id, oldest in self.env.cr.fetchall()
               if service_id not in busy and service_id not in self.failed_services]
        return [service_id for _served, _oldest, service_id in sorted(due)[:slots]]

    def _claim(self, service_ids):
        """Claim the oldest due row of each service, mark it sending (attempt counted) and commit."""
        if not service_ids:
            return self.Webhook
        ids = batch_jobs.claim(self.env, f"""
            SELECT id FROM fusion_billing_webhook WHERE id IN (
                SELECT DISTINCT ON (w.service_id) w.id {_DUE} AND w.service_id IN %(services)s
                 ORDER BY w.service_id, w.id)
             ORDER BY id FOR UPDATE SKIP LOCKED""", {"now": fields.Datetime.now(), "services": tuple(service_ids)})
        webhooks = self.Webhook.browse(ids)
        now = fields.Datetime.now()
        for webhook in webhooks:
            webhook.with_context(tracking_disable=True).write({
                "state": "sending", "attempts": webhook.attempts + 1, "last_attempt_at": now,
                "next_attempt_at": now + LEASE})
        batch_jobs.commit_batch(self.env, 0)  # nothing is locked while sending
        return webhooks

    # ------------------------------------------------------------------ send (worker threads: no ORM)
    def _request(self, webhook):
        """Plain values for ``_send``, read here (the ORM stays in this thread)."""
        service = webhook.service_id
        try:
            body = webhook.payload.encode("utf-8")
            return service.webhook_url, body, signing.headers(service.webhook_secret, body, webhook.unique_key)
        except Exception as error:  # noqa: BLE001 (a bad row fails alone)
            return None, None, error

    def _send(self, url, body, headers):
        """(status, error) of one POST; never raises (a bad row must not stop the others)."""
        if url is None:
            return 0, describe(headers)
        try:
            response = outbound.post(url, body, headers, timeout=SEND_TIMEOUT_SECONDS, allow_loopback=self.loopback)
        except Exception as error:  # noqa: BLE001
            return 0, describe(error)
        if signing.is_success(response.status):
            return response.status, False
        return response.status, f"HTTP {response.status}: {response.excerpt}" if response.excerpt else f"HTTP {response.status}"

    # ------------------------------------------------------------------ outcome
    def _record_completed(self, inflight, done):
        """Record the outcome of each finished send (``done``, taken out of ``inflight``): the
        delivered ones first, each committed alone, so that nothing recorded after them (a
        failure's alert) can undo them; one outcome that cannot be recorded never stops the others."""
        outcomes = [(inflight.pop(future), future.result()) for future in done]
        for (webhook, service_id), outcome in sorted(outcomes, key=lambda item: bool(item[1][1])):
            self._record(webhook, service_id, outcome)

    def _record(self, webhook, service_id, outcome):
        status, error = outcome
        self.served[service_id] += 1
        if error:
            self.failed_services.add(service_id)  # its other rows wait for the next run
        try:
            with self.env.cr.savepoint():
                webhook._fc_record_attempt(status, error)
            if not batch_jobs.commit_batch(self.env, 1):
                self.deadline = 0  # the cron job is out of time: finish what is in flight, claim nothing more
        except Exception:  # noqa: BLE001 (logged; the row is claimed again when its lease expires)
            _logger.exception("Webhook %s: could not record the outcome of its delivery", webhook.id)
            self._rollback()

    def _rollback(self):
        """A fresh transaction after an error (never the test's own one: see ``batch_jobs``)."""
        if batch_jobs.real_transactions(self.env):
            self.env.cr.rollback()


def describe(error, limit=300):
    """One line of at most ``limit`` characters saying what ``error`` (an exception or a text) was."""
    text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
    return " ".join(text.split())[:limit]
