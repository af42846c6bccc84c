"""What a billing service's form shows at a glance: the current periods so far (usage and what
Odoo would bill per metric), unbillable events, webhook failures, the latest reconciliation and
the events received per day.

Read with a few aggregate queries, never record by record: the current periods' usage rows are
rated once per distinct (charge, billable units) — every row within its included quota shares
one rating — so the overview stays quick at NexaCloud's 25,000 subscriptions.
"""
from collections import defaultdict
from datetime import datetime, time, timedelta
from decimal import Decimal

from odoo import fields
from odoo.tools.misc import formatLang

DAYS = 14  # events per day shown in the graph


class ServiceOverview:
    def __init__(self, service):
        service.ensure_one()
        self.service = service
        self.env = service.env
        self.today = fields.Date.context_today(service)

    def values(self):
        """Plain values (numbers, dates, labels) for the template and the tests."""
        return {
            "today": self.today,
            "currency": self.service.currency_id,
            **self.usage(),
            "unbillable": self.unbillable(),
            "webhooks": self.webhooks(),
            "reconciliation": self.reconciliation(),
            "days": self.events_per_day(),
        }

    # ------------------------------------------------------------------ current periods
    def usage(self):
        """Per metric: subscriptions with usage in their current period, total usage and its rated amount."""
        cr = self.env.cr
        cr.execute("""
            SELECT u.metric_id, count(DISTINCT u.subscription_id), sum(u.quantity)
              FROM fusion_billing_usage_live u  -- rows + deltas not folded yet
              JOIN sale_order so ON so.id = u.subscription_id AND so.state != 'cancel'
             WHERE u.service_id = %(service)s AND u.period_start <= %(today)s AND u.period_end > %(today)s
             GROUP BY u.metric_id""", {"service": self.service.id, "today": self.today})
        totals = {metric_id: (subscriptions, quantity or 0.0) for metric_id, subscriptions, quantity in cr.fetchall()}
        # One rating per distinct billable quantity of a charge (units within the quota all rate alike).
        cr.execute("""
            SELECT ch.id, u.metric_id, GREATEST(u.quantity, ch.included_quantity),
                   CASE WHEN ch.charge_model = 'percentage' THEN u.events_count ELSE 0 END, count(*)
              FROM fusion_billing_usage_live u  -- rows + deltas not folded yet
              JOIN sale_order so ON so.id = u.subscription_id AND so.state != 'cancel'
              JOIN fusion_billing_charge ch ON ch.plan_id = so.plan_id AND ch.metric_id = u.metric_id AND ch.active
             WHERE u.service_id = %(service)s AND u.period_start <= %(today)s AND u.period_end > %(today)s
             GROUP BY 1, 2, 3, 4""", {"service": self.service.id, "today": self.today})
        amounts = defaultdict(Decimal)
        charges = {}
        for charge_id, metric_id, quantity, events_count, rows in cr.fetchall():
            charge = charges.setdefault(charge_id, self.env["fusion.billing.charge"].browse(charge_id))
            amounts[metric_id] += charge._rate(quantity or 0, events_count=events_count or 0).amount * rows
        metrics = self.env["fusion.billing.metric"].with_context(active_test=False).browse(
            set(totals) | set(amounts)).sorted(lambda m: (m.name or "", m.id))
        total = sum(amounts.values(), Decimal(0))
        largest = max(amounts.values(), default=Decimal(0))
        rows = []
        for metric in metrics:
            subscriptions, quantity = totals.get(metric.id, (0, 0.0))
            amount = amounts.get(metric.id, Decimal(0))
            rows.append({
                "metric": metric, "name": metric.name, "code": metric.code, "subscriptions": subscriptions,
                "quantity": quantity, "usage": metric._fc_format_quantity(quantity), "amount": amount,
                "amount_text": self.money(amount),
                "share": float(amount / largest) if largest else 0.0,
            })
        return {"metrics": rows, "total_amount": total, "total_amount_text": self.money(total)}

    def money(self, amount):
        return formatLang(self.env, float(amount), currency_obj=self.service.currency_id)

    # ------------------------------------------------------------------ what needs attention
    def unbillable(self):
        """Events kept but billing nothing, per reason (the partial index on state makes this cheap)."""
        Event = self.env["fusion.billing.event"]
        labels = dict(Event._fields["state"]._description_selection(self.env))
        self.env.cr.execute("""SELECT state, count(*), max(timestamp) FROM fusion_billing_event
                                WHERE service_id = %s AND state != 'processed' GROUP BY state ORDER BY 2 DESC""",
                            [self.service.id])
        states = [{"state": state, "label": labels.get(state, state), "count": count, "latest": latest}
                  for state, count, latest in self.env.cr.fetchall()]
        return {"total": sum(s["count"] for s in states), "states": states}

    def webhooks(self):
        self.env.cr.execute("""SELECT state, count(*) FROM fusion_billing_webhook
                                WHERE service_id = %s AND state IN ('failed', 'retrying') GROUP BY state""",
                            [self.service.id])
        counts = dict(self.env.cr.fetchall())
        return {"failed": counts.get("failed", 0), "retrying": counts.get("retrying", 0)}

    def reconciliation(self):
        """The latest reconciled period: rows, amounts and deltas per state (None before the first run)."""
        cr = self.env.cr
        cr.execute("SELECT max(period_start) FROM fusion_billing_reconciliation WHERE service_id = %s",
                   [self.service.id])
        period = cr.fetchone()[0]
        if not period:
            return None
        Recon = self.env["fusion.billing.reconciliation"]
        labels = dict(Recon._fields["state"]._description_selection(self.env))
        cr.execute("""SELECT state, count(*), sum(odoo_amount), sum(app_amount), sum(abs(delta)), max(last_run_at)
                        FROM fusion_billing_reconciliation
                       WHERE service_id = %s AND period_start = %s GROUP BY state""", [self.service.id, period])
        states, last_run = [], None
        for state, count, odoo_amount, app_amount, abs_delta, run_at in cr.fetchall():
            states.append({"state": state, "label": labels.get(state, state), "count": count,
                           "odoo": self.money(odoo_amount or 0), "app": self.money(app_amount or 0),
                           "abs_delta": abs_delta or 0.0, "abs_delta_text": self.money(abs_delta or 0)})
            last_run = max(filter(None, [last_run, run_at]), default=None)
        order = {key: index for index, (key, _label) in enumerate(Recon._fields["state"].selection)}
        states.sort(key=lambda s: order.get(s["state"], 99))
        rows = sum(s["count"] for s in states)
        matched = sum(s["count"] for s in states if s["state"] == "match")
        return {"period_start": period, "last_run_at": last_run, "states": states, "rows": rows,
                "matched_share": matched / rows if rows else 0.0,
                "total_abs_delta_text": self.money(sum(s["abs_delta"] for s in states))}

    # ------------------------------------------------------------------ graph
    def events_per_day(self):
        """Events received per day (UTC, by event time) over the last DAYS days, billable and not,
        with the geometry of a stacked bar chart (the template draws it as SVG)."""
        today = fields.Date.today()
        first = today - timedelta(days=DAYS - 1)
        self.env.cr.execute("""
            SELECT timestamp::date, count(*) FILTER (WHERE state = 'processed'), count(*) FILTER (WHERE state != 'processed')
              FROM fusion_billing_event
             WHERE service_id = %s AND timestamp >= %s AND timestamp < %s
             GROUP BY 1""", [self.service.id, datetime.combine(first, time.min),
                             datetime.combine(today + timedelta(days=1), time.min)])
        found = {day: (billable, unbillable) for day, billable, unbillable in self.env.cr.fetchall()}
        days = []
        for offset in range(DAYS):
            day = first + timedelta(days=offset)
            billable, unbillable = found.get(day, (0, 0))
            days.append({"date": day, "billable": billable, "unbillable": unbillable})
        return {"days": days, **_bars(days)}


def _bars(days, width=420, height=150, top=14, bottom=18):
    """Stacked bars (billable below, unbillable on top) in a ``width`` × ``height`` SVG."""
    peak = max((d["billable"] + d["unbillable"] for d in days), default=0)
    slot = width / len(days)
    scale = (height - top - bottom) / peak if peak else 0
    base = height - bottom
    bars = []
    for index, day in enumerate(days):
        ok, bad = day["billable"] * scale, day["unbillable"] * scale
        bars.append({
            "x": round(index * slot + slot * 0.15, 1), "width": round(slot * 0.7, 1),
            "ok_y": round(base - ok, 1), "ok_height": round(ok, 1),
            "bad_y": round(base - ok - bad, 1), "bad_height": round(bad, 1),
            "label_x": round(index * slot + slot / 2, 1), "label": day["date"].day,
            "title": f"{day['date']}: {day['billable']:,} billable, {day['unbillable']:,} unbillable",
        })
    return {"bars": bars, "peak": peak, "chart_width": width, "chart_height": height, "baseline": base,
            "total": sum(d["billable"] + d["unbillable"] for d in days),
            "total_unbillable": sum(d["unbillable"] for d in days)}
