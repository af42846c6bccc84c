"""How the queue-draining cron jobs claim and commit work, safely with several Odoo workers."""
from contextlib import contextmanager

import psycopg2.errors
from psycopg2.extensions import ISOLATION_LEVEL_READ_COMMITTED, TRANSACTION_STATUS_IDLE

from odoo.modules import module

CLAIM_RETRIES = 5
# What another worker's concurrent commit can cause in a batch (Odoo runs REPEATABLE READ).
CONFLICTS = (psycopg2.errors.SerializationFailure, psycopg2.errors.DeadlockDetected)


def real_transactions(env):
    """Whether batches may be committed: always in production; in a test only when it drives
    real database sessions (context ``fc_real_transactions``), never on the test's own cursor."""
    return not module.current_test or env.context.get("fc_real_transactions")


def claim(env, query, params):
    """Ids locked by ``query`` (a ``SELECT id … FOR UPDATE SKIP LOCKED``) in a fresh transaction.

    Odoo runs REPEATABLE READ: a row another worker updated and committed after this transaction
    started cannot be locked (serialization failure). Nothing was done with it yet, so start a
    new transaction and claim again.
    """
    retries = 0
    while True:
        env.flush_all()
        try:
            # An expected conflict, not an error: not logged (mute_logger is not thread-safe, and
            # workers in one process claim at the same time).
            with env.cr.savepoint(flush=False):
                env.cr.execute(query, params, log_exceptions=False)
                return [row[0] for row in env.cr.fetchall()]
        except psycopg2.errors.SerializationFailure as error:
            retries = retry_after_conflict(env, error, retries)


def commit_batch(env, processed):
    """Commit a finished batch and report it to the scheduled job running it; False when the job is
    out of time: the caller stops, and the job is marked as having work left, so that Odoo runs it
    again at once (partially done) rather than at its next interval (``ir.cron._run_job``: a run
    that reports nothing remaining is fully done; its time budget is ``MIN_TIME_PER_JOB``)."""
    if not real_transactions(env):
        return True  # a test runs in one transaction that must not be committed
    cron = env["ir.cron"]
    if cron._commit_progress(processed):
        return True
    if env.context.get("ir_cron_progress_id"):
        cron._commit_progress(0, remaining=1)  # more to do: run again at once
    return False


def commit(env):
    """Commit a finished batch without a time budget (work that must finish in this run, e.g. inside
    Odoo's own recurring-invoice job, whose progress is not ours to report)."""
    if real_transactions(env):
        env.cr.commit()


def retry_after_conflict(env, error, retries):
    """A conflict with another worker's commit (``CONFLICTS``): roll the transaction back, so
    its work is claimed again on a fresh snapshot. Returns the new count of consecutive
    retries; re-raises past ``CLAIM_RETRIES`` or on a test's own transaction."""
    if not real_transactions(env) or retries >= CLAIM_RETRIES:
        raise error
    env.cr.rollback()
    return retries + 1


def start_read_committed(cr):
    """Run the transaction ``cr`` is about to start in READ COMMITTED instead of Odoo's REPEATABLE
    READ, if it has not started yet (True then). Stays so across Odoo's replays of the request (a
    rollback keeps the connection's setting); Odoo's next cursor on this pooled connection sets
    REPEATABLE READ back (``sql_db.Cursor.__init__``). Never on a test's own cursor."""
    connection = getattr(cr, "connection", None)
    if module.current_test or connection is None or connection.info.transaction_status != TRANSACTION_STATUS_IDLE:
        return False
    connection.set_isolation_level(ISOLATION_LEVEL_READ_COMMITTED)  # sent with the BEGIN: no round trip
    return True


def in_read_committed(cr):
    connection = getattr(cr, "connection", None)
    return connection is not None and not module.current_test and \
        connection.isolation_level == ISOLATION_LEVEL_READ_COMMITTED


@contextmanager
def read_committed(env):
    """``env`` where writes run READ COMMITTED and are committed on exit: the request's own
    transaction when it runs so (``start_read_committed``; committed at once rather than after
    the answer is built, so that rows other requests wait for are held the shortest time; an
    error rolls the whole request back, as for any failed request), else a ``side_transaction``."""
    if in_read_committed(env.cr):
        yield env
        env.cr.commit()
    else:
        with side_transaction(env) as side_env:
            yield side_env


@contextmanager
def side_transaction(env):
    """``env`` on a transaction of its own, READ COMMITTED, committed on exit (rolled back on error).

    For short writes that must not make the request's transaction conflict: Odoo runs every
    request in REPEATABLE READ, where touching a row another transaction committed after the
    snapshot (an identical event inserted by a concurrent request, a key's last use) is a
    serialization failure that costs a replay of the whole request. READ COMMITTED waits for such
    a row and then sees it. The caller must keep it idempotent: the request may still be replayed.
    In a test on the test's own cursor it is a savepoint of that cursor: a second connection could
    not see the test's uncommitted data, and would commit for real.
    """
    if not real_transactions(env):
        with env.cr.savepoint():
            yield env
        return
    with env.registry.cursor() as cr:
        # Sent with the transaction's BEGIN (no round trip); Odoo's next cursor on this pooled
        # connection sets REPEATABLE READ back (sql_db.Cursor.__init__).
        cr.connection.set_isolation_level(ISOLATION_LEVEL_READ_COMMITTED)
        yield env(cr=cr)
