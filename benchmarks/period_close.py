#!/usr/bin/env python3
"""Benchmark of the period close through Odoo's recurring run (issue 15): 25,000 live
subscriptions due today, each with a base fee and 3 metered charges, HST on every line.

Setup (not timed): a live service with a monthly plan (base fee 20.00, its native recurring price)
carrying a standard, a graduated and a package charge; ``--subscriptions`` confirmed subscriptions
started on the first day of last month, last month already invoiced (their Date of Next Invoice is
today) and last month's usage (three rollups per subscription, all above the included quota), in a
CAD company with HST on the usage and plan products; then ``VACUUM ANALYZE``.
Then, each in its own ``odoo shell`` process:

    baseline   Odoo boots, does nothing (the fixed cost inside every phase)
    run        Odoo's scheduled action "generate recurring invoices and payments", run by
               ``--workers`` processes at once (as several cron workers would): our hook first
               closes every due subscription's usage onto its order (rating 3 charges, one usage
               line each), then the recurring engine invoices each subscription (the fee for this
               month in advance, last month's usage in arrears, HST) and posts the invoices. The
               usage part is timed on its own inside each worker and reported separately: on CI the
               engine is the TEST-ONLY stand-in of sale_subscription, whose speed says nothing about
               Enterprise's.
    rerun      the same scheduled action again: must bill nothing (idempotent)

Then checks that every subscription was billed exactly once (its 3 usage rows closed, each with an
amount billed by one usage line on the one invoice of this month that also carries the fee, no
usage line left pending, one invoice per subscription).
Prints wall time, net time (minus the baseline), the ratio to the 600 s target and peak memory.

    python3 benchmarks/period_close.py --pg "host=127.0.0.1 port=5432 user=odoo" [--workers 2] [--subscriptions 25000]
"""

import sys

from harness import argument_parser, odoo_args, prepare_database, print_table, run_shell, settle

TARGETS = {"run": 600, "rerun": 600}

SETUP = """
import uuid
from datetime import date
from odoo import Command
from odoo.addons.fusion_centralize_billing.core import periods
tag = uuid.uuid4().hex[:6]
this_month = date.today().replace(day=1)
start = periods.add_period(this_month, 'month', 1, -1)
cad = env.ref('base.CAD')
if env.company.currency_id != cad and not env['account.move.line'].search_count([], limit=1):
    env.company.currency_id = cad  # a Canadian company billing in CAD, as in production
hst = env['account.tax'].create({'name': 'HST 13%% (bench ' + tag + ')', 'amount': 13, 'amount_type': 'percent',
                                 'type_tax_use': 'sale'})
env.ref('fusion_centralize_billing.product_metered_usage').taxes_id = hst
service = env['fusion.billing.service'].create({'name': 'Close bench ' + tag, 'code': 'close_' + tag,
                                                'billing_mode': 'live'})
metrics = [env['fusion.billing.metric'].create({'service_id': service.id, 'code': code, 'name': code,
                                                'aggregation': 'sum', 'field_name': 'n'})
           for code in ('api_calls', 'storage_gb', 'seats')]
product = env['product.product'].create({'name': 'Close bench plan', 'type': 'service', 'recurring_invoice': True,
                                          'taxes_id': [Command.set(hst.ids)]})
plan = env['sale.subscription.plan'].create({'name': 'Close bench', 'x_fc_service_id': service.id,
                                             'x_fc_plan_code': 'close-' + tag, 'x_fc_amount': 20,
                                             'x_fc_currency_id': cad.id, 'x_fc_product_id': product.id})
charges = [
    {'charge_model': 'standard', 'included_quantity': 1000, 'properties': {'amount': '0.002'}},
    {'charge_model': 'graduated', 'included_quantity': 10, 'properties': {'graduated_ranges': [
        {'from_value': 0, 'to_value': 100, 'per_unit_amount': '0.10', 'flat_amount': '0'},
        {'from_value': 101, 'to_value': None, 'per_unit_amount': '0.05', 'flat_amount': '1'}]}},
    {'charge_model': 'package', 'included_quantity': 5, 'properties': {'amount': '15', 'package_size': 10,
                                                                       'free_units': 0}},
]
for metric, values in zip(metrics, charges):
    env['fusion.billing.charge'].create(dict(values, service_id=service.id, plan_id=plan.id, metric_id=metric.id,
                                             plan_code='close-' + tag))
pricelist = service._fc_pricelist()
partners = env['res.partner'].create([{'name': 'Close client %%s' %% n} for n in range(%(subscriptions)s // 10 or 1)])
line = plan._fc_base_fee_line_values()
for offset in range(0, %(subscriptions)s, 1000):
    orders = env['sale.order'].with_context(tracking_disable=True).create([{
        'partner_id': partners[n %% len(partners)].id, 'plan_id': plan.id, 'x_fc_service_id': service.id,
        'x_fc_external_id': 'close-%%s-%%s' %% (tag, n), 'pricelist_id': pricelist.id, 'start_date': start,
        'order_line': [Command.create(line)],
    } for n in range(offset, min(offset + 1000, %(subscriptions)s))])
    orders.action_confirm()
    # Last month was invoiced already (not timed): today is their Date of Next Invoice.
    orders.write({'next_invoice_date': this_month, 'last_invoice_date': start})
    env.cr.commit()
env.flush_all()
env.cr.execute('''
    INSERT INTO fusion_billing_usage (subscription_id, metric_id, period_start, period_end, quantity, events_count,
                                      service_id, partner_id, company_id, source, state, create_uid, write_uid,
                                      create_date, write_date)
    SELECT o.id, m.id, %%s, %%s, 100 + (o.id %%%% 5000), 1, o.x_fc_service_id, o.partner_id, o.company_id,
           'events', 'open', 1, 1, now(), now()
      FROM sale_order o CROSS JOIN unnest(%%s) AS m(id) WHERE o.x_fc_service_id = %%s''',
    [start, this_month, [m.id for m in metrics], service.id])
env.cr.commit()
result = {'service_id': service.id}
"""

# The scheduled action's own entry point; the usage part (our hook) is timed inside it.
RUN = """
import time
from odoo.addons.fusion_centralize_billing.services import billing_cycle
hook = billing_cycle.BillingCycle.before_recurring_invoicing
usage_seconds = []
def timed(self, *args, **kwargs):
    started = time.monotonic()
    try:
        return hook(self, *args, **kwargs)
    finally:
        usage_seconds.append(time.monotonic() - started)
billing_cycle.BillingCycle.before_recurring_invoicing = timed
started = time.monotonic()
invoices = env['sale.order']._cron_recurring_create_invoice()
env.cr.commit()
result = {'usage_s': round(sum(usage_seconds), 1), 'total_s': round(time.monotonic() - started, 1)}
"""

CHECK = """
env.cr.execute("SELECT count(*), count(DISTINCT partner_id), coalesce(sum(amount_total), 0), "
               "coalesce(sum(amount_tax), 0) FROM account_move WHERE x_fc_service_id = %(service)s AND state = 'posted'")
invoices, customers, total, tax = env.cr.fetchone()
env.cr.execute('''
    SELECT o.id,
           (SELECT count(*) FROM fusion_billing_usage u WHERE u.subscription_id = o.id AND u.state != 'open'),
           (SELECT count(*) FROM fusion_billing_usage u WHERE u.subscription_id = o.id AND u.state = 'billed'),
           (SELECT count(DISTINCT l.move_id) FROM fusion_billing_usage u
              JOIN account_move_line l ON l.id = u.invoice_line_id WHERE u.subscription_id = o.id),
           (SELECT count(*) FROM sale_order_line l WHERE l.order_id = o.id AND l.x_fc_line_kind = 'usage'),
           (SELECT count(*) FROM sale_order_line l WHERE l.order_id = o.id AND l.x_fc_pending),
           (SELECT count(DISTINCT l.move_id) FROM account_move_line l JOIN sale_order_line_invoice_rel r
              ON r.invoice_line_id = l.id JOIN sale_order_line s ON s.id = r.order_line_id WHERE s.order_id = o.id),
           (SELECT count(*) FROM account_move_line l JOIN sale_order_line_invoice_rel r ON r.invoice_line_id = l.id
              JOIN sale_order_line s ON s.id = r.order_line_id WHERE s.order_id = o.id)
      FROM sale_order o WHERE o.x_fc_service_id = %(service)s''')
# every period closed (3 rows); each billed row on one usage line, none left pending; one invoice
# carrying the fee and those usage lines (a charge rated 0 bills nothing)
wrong = [row[0] for row in env.cr.fetchall()
         if not (row[1] == 3 and row[2] == row[4] and row[3] == 1 and row[5] == 0 and row[6] == 1 and row[7] == row[4] + 1)]
result = {'invoices': invoices, 'customers': customers, 'total_incl_tax': float(total), 'hst': float(tax),
          'subscriptions_not_billed_exactly_once': len(wrong)}
"""


def main():
    parser = argument_parser(__doc__, "fusion_billing_bench_close")  # its own: every subscription in it is closed
    parser.add_argument("--subscriptions", type=int, default=25_000)
    parser.add_argument("--workers", type=int, default=2, help="processes running the scheduled action at once")
    options = parser.parse_args()
    with odoo_args(options.pg, options.odoo_db) as args:
        prepare_database(options.pg, options.odoo_db, args)
        service = run_shell(args, SETUP % {"subscriptions": options.subscriptions}, "setup")[2]["service_id"]
        settle(options.pg, options.odoo_db)
        results = {"baseline": run_shell(args, "result = {}", "baseline"),
                   "run": run_shell(args, RUN, "run", processes=options.workers),
                   "rerun": run_shell(args, RUN, "rerun"),
                   "check": run_shell(args, CHECK % {"service": service}, "check")}
    print_table(results, TARGETS)
    run = results["run"][2]
    workers = run["workers"] if "workers" in run else [run]
    usage = max(worker["usage_s"] for worker in workers)
    print(f"\nrun: usage part (our hook: rate, usage lines) {usage:.1f} s of the slowest worker; "
          f"the rest is the recurring engine's own invoicing "
          f"(max worker total {max(worker['total_s'] for worker in workers):.1f} s)")
    if results["check"][2]["subscriptions_not_billed_exactly_once"]:
        sys.exit("some subscriptions were not billed exactly once")
    if not results["check"][2]["hst"]:
        sys.exit("the invoices carry no HST")
    if results["check"][2]["invoices"] != options.subscriptions:
        sys.exit("not one invoice per subscription: the re-run billed something, or a subscription was not invoiced")


if __name__ == "__main__":
    main()
