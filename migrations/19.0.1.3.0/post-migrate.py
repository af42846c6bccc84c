"""19.0.1.3.0: usage rows left open in periods the close has already gone past (the billing grid
moved under them: a person changed the Date of Next Invoice, a month-end anchor, the anchor
recomputed by 19.0.1.2.0's predecessor for rows filed on the start-date grid, an activation that
skipped periods, a late delta of an uncharged metric). From this version on the close takes them
(``fusion.billing.usage._fc_sweep``); the ones already behind it are settled here:

* usage of a confirmed subscription of a live service, recorded since its confirmation, with a
  close still ahead: left open, so its next close bills it (once, on the next invoice);
* anything else (shadow or draft subscriptions, periods before the activation that were the app's
  to bill, subscriptions with no close ahead): closed as recorded, never billed, and the events
  only they counted are marked late (listed in ``events.errors``), as events of a closed period.
"""
import logging

_logger = logging.getLogger(__name__)


def migrate(cr, version):
    cr.execute("DROP TABLE IF EXISTS fc_stranded")
    cr.execute("""
        CREATE TEMPORARY TABLE fc_stranded AS
        SELECT u.id, u.subscription_id, u.metric_id, u.period_start, u.period_end
          FROM fusion_billing_usage u
          JOIN sale_order so ON so.id = u.subscription_id
          JOIN fusion_billing_service service ON service.id = so.x_fc_service_id
         WHERE u.state = 'open' AND so.x_fc_usage_closed_until IS NOT NULL
           AND u.period_end <= so.x_fc_usage_closed_until
           AND NOT (so.state = 'sale' AND service.billing_mode = 'live' AND so.x_fc_usage_due_date IS NOT NULL
                    AND u.period_start >= so.date_order::date)""")
    cr.execute("""
        UPDATE fusion_billing_event event SET state = 'late'
          FROM fc_stranded stranded
         WHERE event.subscription_id = stranded.subscription_id AND event.metric_id = stranded.metric_id
           AND event.state = 'processed'
           AND event.timestamp >= stranded.period_start AND event.timestamp < stranded.period_end
           AND NOT EXISTS (SELECT 1 FROM fusion_billing_usage counted
                            WHERE counted.subscription_id = stranded.subscription_id
                              AND counted.metric_id = stranded.metric_id AND counted.state IN ('closed', 'billed')
                              AND event.timestamp >= counted.period_start AND event.timestamp < counted.period_end)""")
    events = cr.rowcount
    cr.execute("""
        UPDATE fusion_billing_usage usage SET state = 'closed', amount = 0
          FROM fc_stranded stranded WHERE usage.id = stranded.id""")
    rows = cr.rowcount
    cr.execute("DROP TABLE fc_stranded")
    _logger.info("Usage rows left open behind the close: %s closed as recorded (%s events marked late); "
                 "the ones of live subscriptions since their confirmation are billed by their next close",
                 rows, events)
