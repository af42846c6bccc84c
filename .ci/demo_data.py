# Demo data for looking at the screens (README screenshots): run inside `odoo shell` on a database
# served by .ci/serve, e.g. by .ci/screenshots. Never used by the tests; never run it on production.
#
#   FUSION_DEMO_URL   where the served Odoo answers (events are sent through the real API)
#
# It creates a NexaCloud-shaped source database next to Odoo's (fusion_billing_demo_nexacloud,
# 240 users) with its read-only role, imports it (dry run, real run, a refused one, a re-run and a
# dry run after a bad row appeared), reconciles this month, and sets up NexaDesk (shadow) with 40
# customers whose app sent two weeks of events (a day of outage, some unbillable ones).
import os
import random
import uuid
from datetime import datetime, time, timedelta

import psycopg2
import requests
from psycopg2.extensions import make_dsn

from odoo import Command, fields
from odoo.tools import config

from odoo.addons.fusion_centralize_billing.core import nexacloud_sample, periods

random.seed(17)
URL = os.environ.get("FUSION_DEMO_URL", "http://127.0.0.1:8069")
SOURCE_DB, SOURCE_ROLE, SOURCE_PASSWORD = "fusion_billing_demo_nexacloud", "fusion_demo_ro", "demo-Passw0rd"
COMPANIES = ["Boréal Technologies", "Maple Leaf Hosting Inc.", "Gatineau Bakery Co-op", "Nordik Analytics",
             "Fundy Tide Studios", "Laurentian Legal LLP", "Prairie Sky Robotics", "Rideau Dental Group"]
PEOPLE = ["Élise Roy", "Marc Tremblay", "Aisha Khan", "Noah Gagnon", "Olivia Chen", "Liam MacDonald",
          "Sofia Rossi", "Étienne Bouchard", "Maya Singh", "Lucas Martin", "Chloé Lavoie", "Owen Fraser"]

server = {key: config[f"db_{key}"] for key in ("host", "port", "user", "password") if config.get(f"db_{key}")}
server.setdefault("host", "127.0.0.1")


def admin_sql(statements, database="postgres"):
    connection = psycopg2.connect(make_dsn(dbname=database, **server))
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def user(login, name, group):
    found = env["res.users"].search([("login", "=", login)])
    return found or env["res.users"].with_context(no_reset_password=True).create({
        "login": login, "password": login, "name": name, "email": f"{login}@nexasystems.example",
        "group_ids": [Command.link(env.ref(group).id)]})


def run_import(requester, dry_run):
    wizard = env["fusion.billing.nexacloud.import"].with_user(requester).create({"dry_run": dry_run})
    wizard.action_run_import()
    env.cr.commit()
    env["fusion.billing.import.run"]._cron_run_queued()
    env.cr.commit()
    return wizard.run_id


# ---------------------------------------------------------------- people
admin = env.ref("base.user_admin")
jordan = user("jordan", "Jordan Tremblay", "fusion_centralize_billing.group_fusion_billing_user")
priya = user("priya", "Priya Singh", "fusion_centralize_billing.group_fusion_billing_manager")
env.company.currency_id = env.ref("base.CAD") if not env["account.move"].search_count([], limit=1) else env.company.currency_id

# ---------------------------------------------------------------- NexaCloud source + import history
admin_sql([f'DROP DATABASE IF EXISTS "{SOURCE_DB}" WITH (FORCE)', f'DROP ROLE IF EXISTS "{SOURCE_ROLE}"',
           f'CREATE DATABASE "{SOURCE_DB}"'])
source = psycopg2.connect(make_dsn(dbname=SOURCE_DB, **server))
with source, source.cursor() as cursor:
    nexacloud_sample.load_scale(cursor, users=240, subscriptions=300, deployments=700, plans=8)
    for index, company in enumerate(COMPANIES):  # some companies named like their only contact
        person = company if index % 2 == 0 else PEOPLE[index]
        cursor.execute("UPDATE users SET full_name = %s, company_name = %s WHERE id = %s",
                       [person, company, nexacloud_sample.sid("u", index + 1)])
    for index, person in enumerate(PEOPLE):
        cursor.execute("UPDATE users SET full_name = %s, company_name = NULL WHERE id = %s",
                       [person, nexacloud_sample.sid("u", index + 20)])
    nexacloud_sample.create_read_only_role(cursor, SOURCE_ROLE, SOURCE_PASSWORD, SOURCE_DB)
source.close()
env["ir.config_parameter"].sudo().set_param("fusion_billing.nexacloud_dsn", make_dsn(
    host=server["host"], port=server.get("port", 5432), dbname=SOURCE_DB, user=SOURCE_ROLE, password=SOURCE_PASSWORD))
env.cr.commit()

run_import(jordan, True)                                   # a user previews it
run_import(priya, False)                                   # an administrator imports it
env["fusion.billing.import.run"].with_user(jordan)._create_queued(False)  # queued as real for a user…
env.cr.commit()
env["fusion.billing.import.run"]._cron_run_queued()       # …refused by the job
env.cr.commit()
run_import(admin, False)                                   # a re-run changes nothing
admin_sql(["ALTER TABLE deployments ALTER COLUMN vcpu TYPE text",
           f"UPDATE deployments SET vcpu = 'two' WHERE id = '{nexacloud_sample.sid('d', 3)}'"], SOURCE_DB)
run_import(priya, True)                                    # a bad row appeared: it fails alone

nexacloud = env["fusion.billing.service"].search([("code", "=", "nexacloud")], limit=1)
first = fields.Date.today().replace(day=1)
following = periods.add_period(first, "month", 1)
env["fusion.billing.reconciliation"]._run(nexacloud, first, following, nexacloud._fc_source_bills(first, following))
env.cr.commit()

# ---------------------------------------------------------------- NexaDesk: a metered app sending events
desk = env["fusion.billing.service"].search([("code", "=", "nexadesk")], limit=1) or env["fusion.billing.service"].create(
    {"name": "NexaDesk", "code": "nexadesk", "billing_mode": "shadow", "currency_id": env.ref("base.CAD").id})
Metric = env["fusion.billing.metric"]
metrics = {}
for code, name, aggregation, field, unit, decimals in (
        ("conversations", "Conversations", "count", False, "conversations", 0),
        ("agent_seats", "Agent seats", "max", "seats", "seats", 0),
        ("storage_gb", "Message storage", "sum", "gb", "GB", 2)):
    metrics[code] = Metric.search([("service_id", "=", desk.id), ("code", "=", code)]) or Metric.create({
        "service_id": desk.id, "code": code, "name": name, "aggregation": aggregation, "field_name": field,
        "unit": unit, "decimal_places": decimals})
plan = env["sale.subscription.plan"].search([("x_fc_service_id", "=", desk.id)], limit=1)
if not plan:
    product = env["product.product"].create({"name": "NexaDesk Team", "type": "service", "list_price": 29,
                                             "recurring_invoice": True})
    plan = env["sale.subscription.plan"].create({
        "name": "NexaDesk Team (monthly)", "billing_period_value": 1, "billing_period_unit": "month",
        "x_fc_service_id": desk.id, "x_fc_plan_code": "team", "x_fc_amount": 29, "x_fc_product_id": product.id,
        "x_fc_currency_id": desk.currency_id.id})
    for code, included, amount in (("conversations", 500, "0.02"), ("agent_seats", 3, "12"), ("storage_gb", 5, "0.25")):
        env["fusion.billing.charge"].create({
            "service_id": desk.id, "plan_id": plan.id, "plan_code": "team", "metric_id": metrics[code].id,
            "included_quantity": included, "charge_model": "standard", "properties": {"amount": amount}})
customers = []
for index in range(40):
    external = f"desk-{index + 1:03d}"
    order = env["sale.order"].search([("x_fc_service_id", "=", desk.id), ("x_fc_external_id", "=", external)])
    if not order:
        name = COMPANIES[index % len(COMPANIES)] if index < len(COMPANIES) else f"{PEOPLE[index % len(PEOPLE)]} ({index})"
        partner = env["res.partner"].create({"name": name, "email": f"{external}@clients.example",
                                             "is_company": index < len(COMPANIES)})
        link = env["fusion.billing.account.link"].create({"service_id": desk.id, "external_id": f"cust-{external}",
                                                          "partner_id": partner.id, "email": partner.email})
        order = env["sale.order"].create({
            "partner_id": partner.id, "plan_id": plan.id, "x_fc_service_id": desk.id, "x_fc_external_id": external,
            "x_fc_account_link_id": link.id, "pricelist_id": desk._fc_pricelist().id,
            "start_date": periods.add_period(first, "month", 1, -2),
            "order_line": [Command.create(plan._fc_base_fee_line_values())]})
    customers.append((external, 1 + index % 7))  # busier customers first
env.cr.commit()

key = desk.with_user(admin).action_generate_api_key()["context"]["default_key"]
env.cr.commit()
events, today = [], fields.Date.today()
for days_ago in range(13, -1, -1):
    day = today - timedelta(days=days_ago)
    if days_ago == 5:
        continue  # the app's outage: nothing sent that day
    for external, weight in customers:
        for number in range(random.randint(2, 6) * weight):
            at = datetime.combine(day, time(8)) + timedelta(minutes=random.randint(0, 600))
            events.append({"transaction_id": uuid.uuid4().hex, "external_subscription_id": external,
                           "code": "conversations", "timestamp": at.timestamp(), "properties": {}})
        events.append({"transaction_id": uuid.uuid4().hex, "external_subscription_id": external, "code": "storage_gb",
                       "timestamp": datetime.combine(day, time(23)).timestamp(),
                       "properties": {"gb": round(random.uniform(0.05, 0.9) * weight, 3)}})
        if days_ago == 13:
            events.append({"transaction_id": uuid.uuid4().hex, "external_subscription_id": external,
                           "code": "agent_seats", "timestamp": datetime.combine(day, time(9)).timestamp(),
                           "properties": {"seats": 1 + weight}})
    if days_ago in (9, 2, 1):  # a new metric the app started sending before it exists in Odoo, an unknown account
        for number in range(25 if days_ago != 9 else 60):
            events.append({"transaction_id": uuid.uuid4().hex, "external_subscription_id": "desk-999" if number % 3
                           else customers[0][0], "code": "voice_minutes" if number % 3 == 0 else "conversations",
                           "timestamp": datetime.combine(day, time(12)).timestamp(), "properties": {"minutes": 3}})
for offset in range(0, len(events), 100):
    response = requests.post(f"{URL}/api/billing/v1/events/batch", json={"events": events[offset:offset + 100]},
                             headers={"Authorization": f"Bearer {key}"}, timeout=60)
    response.raise_for_status()
env.invalidate_all()
for attempts, error in ((12, "Connection refused (https://desk.nexasystems.example/billing/webhooks)"),
                        (12, "HTTP 500 from https://desk.nexasystems.example/billing/webhooks")):
    env["fusion.billing.webhook"].create({
        "service_id": desk.id, "event_type": "invoice.created", "object_type": "invoice", "payload": "{}",
        "state": "failed", "attempts": attempts, "last_error": error})
env.cr.commit()
print(f"demo data ready: {len(events)} events sent to NexaDesk; services {nexacloud.id} (NexaCloud), {desk.id} (NexaDesk)")
