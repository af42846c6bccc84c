#!/usr/bin/env python3
"""Benchmark of the usage period close (issue #6): 25,000 live subscriptions, 3 metered charges each.

Setup (not timed): a live service with a monthly plan carrying a standard, a graduated and a
package charge, ``--subscriptions`` confirmed subscriptions started on the first day of last
month, and last month's usage (three rollups per subscription, all above the included quota),
in a CAD company with HST on the usage and plan products; then ``VACUUM ANALYZE``.
Then, each in its own ``odoo shell`` process:

    baseline   Odoo boots, does nothing (the fixed cost inside every phase)
    close      the period-close job, run by ``--workers`` processes at once (as several Odoo
               workers would): rates 3 charges per subscription and posts the usage invoices
               (one per customer and day on the service's own invoice, 3 HST-taxed lines per
               subscription)
    rerun      the same job again: must bill nothing (idempotent)

Then checks that every subscription was billed exactly once (3 usage rows closed, as many
usage order lines as billed rows, each on one invoice line), however the workers shared the work. Prints wall time, net
time (minus the baseline), the ratio to the 600 s target and peak memory.

    python3 benchmarks/period_close.py --pg "host=127.0.0.1 port=5432 user=odoo" [--odoo-db bench] [--workers 2]
"""

import sys

from harness import argument_parser, odoo_args, prepare_database, print_table, run_shell, settle

TARGETS = {"close": 600, "rerun": 600}

SETUP = """
import uuid
from datetime import date
from odoo import Command
from odoo.addons.fusion_centralize_billing.core import periods
tag = uuid.uuid4().hex[:6]
start = periods.add_period(date.today().replace(day=1), 'month', 1, -1)
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
                                             'x_fc_product_id': product.id})
charges = [
    {'charge_model': 'standard', 'included_quantity': 1000, 'properties': {'amount': '0.002'}},
    {'charge_model': 'graduated', 'included_quantity': 10, 'properties': {'graduated_ranges': [
        {'from_value': 0, 'to_value': 100, 'per_unit_amount': '0.10', 'flat_amount': '0'},
        {'from_value': 101, 'to_value': None, 'per_unit_amount': '0.05', 'flat_amount': '1'}]}},
    {'charge_model': 'package', 'included_quantity': 5, 'properties': {'amount': '15', 'package_size': 10,
                                                                       'free_units': 0}},
]
for metric, values in zip(metrics, charges):
    env['fusion.billing.charge'].create(dict(values, service_id=service.id, plan_id=plan.id, metric_id=metric.id))
pricelist = service._fc_pricelist()
partners = env['res.partner'].create([{'name': 'Close client %%s' %% n} for n in range(%(subscriptions)s // 10 or 1)])
for offset in range(0, %(subscriptions)s, 1000):
    env['sale.order'].create([{
        'partner_id': partners[n %% len(partners)].id, 'plan_id': plan.id, 'x_fc_service_id': service.id,
        'x_fc_external_id': 'close-%%s-%%s' %% (tag, n), 'pricelist_id': pricelist.id, 'start_date': start,
        'state': 'sale', 'order_line': [Command.create({'product_id': product.id, 'price_unit': 20})],
    } for n in range(offset, min(offset + 1000, %(subscriptions)s))])
    env.cr.commit()
env.flush_all()
env.cr.execute('''
    INSERT INTO fusion_billing_usage (subscription_id, metric_id, period_start, period_end, quantity, events_count,
                                      service_id, partner_id, company_id, source, state, create_uid, write_uid,
                                      create_date, write_date)
    SELECT o.id, m.id, %%s, %%s, 100 + (o.id %%%% 5000), 1, o.x_fc_service_id, o.partner_id, o.company_id,
           'events', 'open', 1, 1, now(), now()
      FROM sale_order o CROSS JOIN unnest(%%s) AS m(id) WHERE o.x_fc_service_id = %%s''',
    [start, periods.add_period(start, 'month', 1), [m.id for m in metrics], service.id])
env.cr.commit()
result = {'service_id': service.id}
"""

CLOSE = """
env['sale.order']._cron_close_usage_periods()
env.cr.commit()
result = {}
"""

CHECK = """
env.cr.execute("SELECT count(*), count(DISTINCT partner_id), coalesce(sum(amount_total), 0), "
               "coalesce(sum(amount_tax), 0) FROM account_move WHERE x_fc_service_id = %(service)s AND state = 'posted'")
invoices, customers, total, tax = env.cr.fetchone()
env.cr.execute('''
    SELECT o.id, (SELECT count(*) FROM fusion_billing_usage u WHERE u.subscription_id = o.id AND u.state != 'open'),
           (SELECT count(*) FROM fusion_billing_usage u WHERE u.subscription_id = o.id AND u.state = 'billed'),
           (SELECT count(*) FROM sale_order_line l WHERE l.order_id = o.id AND l.sequence = 1000),
           (SELECT count(*) FROM sale_order_line_invoice_rel r JOIN sale_order_line l ON l.id = r.order_line_id
             WHERE l.order_id = o.id AND l.sequence = 1000)
      FROM sale_order o WHERE o.x_fc_service_id = %(service)s''')
# every period closed (3 rows), each billed row on exactly one usage order line, each invoiced once
wrong = [row[0] for row in env.cr.fetchall() if row[1] != 3 or not row[2] == row[3] == row[4]]
result = {'invoices': invoices, 'customers': customers, 'total_incl_tax': float(total), 'hst': float(tax),
          'subscriptions_not_billed_exactly_once': len(wrong)}
"""


def main():
    parser = argument_parser(__doc__, "fusion_billing_bench_close")  # its own: every subscription in it is closed
    parser.add_argument("--subscriptions", type=int, default=25_000)
    parser.add_argument("--workers", type=int, default=1, help="processes running the close job at once")
    options = parser.parse_args()
    with odoo_args(options.pg, options.odoo_db) as args:
        prepare_database(options.pg, options.odoo_db, args)
        service = run_shell(args, SETUP % {"subscriptions": options.subscriptions}, "setup")[2]["service_id"]
        settle(options.pg, options.odoo_db)
        results = {"baseline": run_shell(args, "result = {}", "baseline"),
                   "close": run_shell(args, CLOSE, "close", processes=options.workers),
                   "rerun": run_shell(args, CLOSE, "rerun"),
                   "check": run_shell(args, CHECK % {"service": service}, "check")}
    print_table(results, TARGETS)
    if results["check"][2]["subscriptions_not_billed_exactly_once"]:
        sys.exit("some subscriptions were not billed exactly once")
    if not results["check"][2]["hst"]:
        sys.exit("the usage invoices carry no HST")


if __name__ == "__main__":
    main()
