"""The NexaCloud import itself: source rows (streamed, planned by ``core.nexacloud``) → Odoo upserts.

Shadow-safe by construction: subscriptions are created as draft quotations and never
confirmed (they carry their catalog plan and its base-fee line; an administrator activates them
after the cutover), no payment token is touched, Stripe ids are kept for information, catalog
charges get no plan reference, nothing is posted, e-mailed or webhooked. A trial keeps the end
of its trial (``x_fc_trial_end``: Odoo bills nothing before it); an ``incomplete`` subscription
(its first payment never went through, Stripe bills nothing) is skipped. Idempotent: every record is
found again by its source key and only written when a value differs.

Rows are handled in batches: a batch is written at once inside a savepoint; if anything in it
fails, the batch is replayed row by row (one savepoint each) so one bad row never takes the
others down.
"""
import logging
from collections import defaultdict
from contextlib import contextmanager
from decimal import Decimal
from itertools import islice

import psycopg2

from odoo import Command, fields
from odoo.exceptions import UserError
from odoo.tools import float_compare

from ..core import nexacloud, periods

_logger = logging.getLogger(__name__)

DSN_PARAMETER = "fusion_billing.nexacloud_dsn"
IMPORT_LOCK = 0x46434249  # pg advisory lock key ("FCBI"): one NexaCloud import at a time, across workers
ENTITIES = ("metrics", "plans", "charges", "partners", "account_links", "subscriptions", "deployments",
            "usage_baselines")
ENTITY_LABELS = {
    "metrics": "Billable metrics", "plans": "Catalog plans", "charges": "Usage charges", "partners": "Contacts",
    "account_links": "Account links (users)", "subscriptions": "Subscriptions",
    "deployments": "Deployments", "usage_baselines": "Usage baselines",
}
OUTCOMES = ("created", "updated", "unchanged", "skipped", "failed")
BATCH = 500
QUIET = {"tracking_disable": True, "mail_create_nolog": True, "mail_create_nosubscribe": True,
         "mail_notrack": True, "mail_notify_force_send": False, "active_test": False}
METRIC_AGGREGATION = {"vcpu": "max", "ram_mb": "max", "disk_gb": "max", "bandwidth_gb": "sum"}
METRIC_DISPLAY = {"vcpu": ("vCPUs", 0), "ram_mb": ("MiB", 0), "disk_gb": ("GB", 0), "bandwidth_gb": ("GB", 2)}


def batches(rows, size=BATCH):
    rows = iter(rows)
    while chunk := list(islice(rows, size)):
        yield chunk


# ---------------------------------------------------------------------------- source, service, lock
def source_dsn(env):
    """(libpq DSN, notes) from the system parameter; a readable UserError when unusable."""
    raw = env["ir.config_parameter"].sudo().get_param(DSN_PARAMETER)
    try:
        return nexacloud.normalise_dsn(raw)
    except nexacloud.SourceError as error:
        raise UserError(str(error)) from None


def open_source(env):
    """The read-only NexaCloud source (one snapshot); a readable UserError when unusable."""
    try:
        return nexacloud.Source(source_dsn(env)[0])
    except nexacloud.SourceError as error:
        raise UserError(str(error)) from None


def nexacloud_service(env, company, create=True):
    """The NexaCloud service of ``company`` (created in shadow mode on the first import)."""
    Service = env["fusion.billing.service"].sudo().with_context(active_test=False)
    service = Service.search([("code", "=", "nexacloud"), ("company_id", "=", company.id)], limit=1)
    if service or not create:
        return service
    return Service.create({"name": "NexaCloud", "code": "nexacloud", "billing_mode": "shadow",
                           "company_id": company.id})


def import_running(cr):
    """Whether an import runs right now (in any worker): its session holds the advisory lock.
    Asked inside a transaction, which then holds the lock until it ends."""
    cr.execute("SELECT pg_try_advisory_xact_lock(%s)", [IMPORT_LOCK])
    return not cr.fetchone()[0]


@contextmanager
def import_lock(cr):
    """Hold the import lock for this database session (across the run's commits); yields whether
    it was obtained. Released on exit, or by PostgreSQL when a killed worker's connection closes."""
    cr.execute("SELECT pg_try_advisory_lock(%s)", [IMPORT_LOCK])
    locked = cr.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            try:
                cr.execute("SELECT pg_advisory_unlock(%s)", [IMPORT_LOCK])
            except psycopg2.Error:  # an aborted transaction: end it, then unlock (a session lock survives it)
                cr.rollback()
                cr.execute("SELECT pg_advisory_unlock(%s)", [IMPORT_LOCK])


# ---------------------------------------------------------------------------- the run
class ImportRun:
    """One run (dry or real) over one read-only source snapshot; collects counts and report lines."""

    def __init__(self, env, service, on_progress=None):
        self.env = env(context=dict(env.context, **QUIET))
        self.service = service.with_env(self.env)
        self.counts = {entity: dict.fromkeys(OUTCOMES, 0) for entity in ENTITIES}
        self.lines = []            # (entity, source table, source id, outcome, reason)
        self.user_state = {}       # source user id → planner action
        self.plan_state = {}       # source plan id → planner action
        self.sub_state = {}        # source subscription id → planner action
        self.plans = {}            # source plan id → sale.subscription.plan id
        self.plan_period = {}      # plan record id → (unit, value)
        self.links = {}            # source user id → (link id, partner id)
        self.subs = {}             # source subscription id → (order id, anchor date, plan record id)
        self.on_progress = on_progress or (lambda text: None)
        self.read = dict.fromkeys(("users", "subscriptions", "deployments"), 0)
        self.plan_monthly = {}     # source plan id → (price per month, currency), for the figures below
        # Subscriptions Stripe still charges although the importer skips them (their user is soft-deleted).
        self.deleted_users_billed = {"count": 0, "monthly": defaultdict(Decimal)}  # currency → amount a month
        # Subscriptions skipped because they never started (incomplete: Stripe bills them nothing).
        self.incomplete_skipped = {"count": 0, "monthly": defaultdict(Decimal)}   # currency → amount a month
        self.trials = set()        # source ids of the trialing subscriptions planned for import

    # ------------------------------------------------------------------ bookkeeping
    def count(self, entity, outcome, number=1):
        self.counts[entity][outcome] += number

    def report(self, entity, table, source_id, outcome, reason):
        self.lines.append((entity, table, str(source_id), outcome, reason))
        if outcome in ("skipped", "failed"):
            self.count(entity, outcome)

    def isolated(self, entity, table, items, write_batch, on_failure):
        """Write ``items`` [(source id, payload)] in one savepoint, else one by one (bad rows fail).

        ``write_batch`` returns what to remember once its savepoint is released, so the
        in-memory maps and counts never refer to rolled-back records.
        """
        if not items:
            return
        try:
            with self.env.cr.savepoint():
                remember = write_batch(items)
            remember()
            return
        except Exception as error:  # noqa: BLE001 — the savepoint undid the batch; isolate the bad row
            _logger.info("NexaCloud import: a batch of %s %s failed (%s); retrying row by row",
                         len(items), entity, _reason(error))
        for source_id, payload in items:
            try:
                with self.env.cr.savepoint():
                    remember = write_batch([(source_id, payload)])
                remember()
            except Exception as error:  # noqa: BLE001 — reported, never aborts the run
                self.report(entity, table, source_id, "failed", _reason(error))
                on_failure(source_id)

    @staticmethod
    def plan(planner, row, *args):
        """``planner(row, *args)``; a row it cannot read (an unexpected value) fails alone."""
        try:
            return planner(row, *args)
        except Exception as error:  # noqa: BLE001 — one unreadable row never stops the run
            return nexacloud.Decision(nexacloud.FAIL, f"unreadable row: {_reason(error)}", code="unreadable")

    def tick(self, table, rows):
        self.read[table] += rows
        self.on_progress(", ".join(f"{count} {name}" for name, count in self.read.items() if count) + " read")

    # ------------------------------------------------------------------ run
    def run(self, source):
        self.ensure_metrics()
        self.import_plans(source.rows("plans"))
        self.import_users(source.rows("users"))
        self.import_subscriptions(source.rows("subscriptions"))
        self.import_deployments(source.rows("deployments"))
        self.report_removed()
        self.env.flush_all()
        return self

    # ------------------------------------------------------------------ catalog
    def ensure_metrics(self):
        Metric = self.env["fusion.billing.metric"]
        self.metrics = {}
        for code, name, prop in nexacloud.LIMIT_METRICS.values():
            unit, decimals = METRIC_DISPLAY[code]
            metric = Metric.search([("service_id", "=", self.service.id), ("code", "=", code)], limit=1)
            if metric and not metric.unit:  # imported before metrics had a unit
                metric.write({"unit": unit, "decimal_places": decimals})
                self.count("metrics", "updated")
            elif metric:
                self.count("metrics", "unchanged")
            else:
                metric = Metric.create({"service_id": self.service.id, "code": code, "name": name,
                                        "aggregation": METRIC_AGGREGATION[code], "field_name": prop,
                                        "unit": unit, "decimal_places": decimals})
                self.count("metrics", "created")
            self.metrics[code] = metric.id

    def import_plans(self, rows):
        Plan = self.env["sale.subscription.plan"]
        Currency = self.env["res.currency"]
        for row in rows:
            decision = self.plan(nexacloud.plan_plan, row, self.service.currency_id.name)
            self.plan_state[row["id"]] = decision.action
            self.plan_monthly[row["id"]] = (nexacloud.monthly_amount(row), (row.get("currency") or "").strip().upper())
            if decision.action != nexacloud.IMPORT:
                self.report("plans", "plans", row["id"], "failed", decision.reason)
                continue
            values = decision.values
            currency = Currency.search([("name", "=", values["currency"])], limit=1)
            if not currency:
                self.plan_state[row["id"]] = nexacloud.FAIL
                self.report("plans", "plans", row["id"], "failed", f"currency {values['currency']} is unknown to Odoo")
                continue
            if decision.warning:
                self.lines.append(("plans", "plans", str(row["id"]), "warning", decision.warning))
            try:
                with self.env.cr.savepoint():
                    plan = Plan.search([("x_fc_service_id", "=", self.service.id),
                                        ("x_fc_plan_code", "=", values["code"])], limit=1)
                    wanted = {"name": values["name"], "billing_period_unit": values["interval"],
                              "billing_period_value": 1, "x_fc_amount": float(values["amount"]),
                              "x_fc_currency_id": currency.id, "x_fc_source_active": values["source_active"]}
                    plan, outcome = self.upsert(plan, wanted, lambda: Plan.create(dict(
                        wanted, x_fc_service_id=self.service.id, x_fc_plan_code=values["code"],
                        x_fc_product_id=self.base_fee_product(values, currency).id)))
                    charge_outcomes = self.import_charges(values)
                self.count("plans", outcome)
                for charge_outcome in charge_outcomes:
                    self.count("charges", charge_outcome)
                self.plans[row["id"]] = plan.id
                self.plan_period[plan.id] = (plan.billing_period_unit, plan.billing_period_value)
            except Exception as error:  # noqa: BLE001
                self.plan_state[row["id"]] = nexacloud.FAIL
                self.report("plans", "plans", row["id"], "failed", _reason(error))

    @staticmethod
    def upsert(record, wanted, create):
        """``(record, outcome)``: created via ``create()``, or only the differing fields written."""
        if not record:
            return create(), "created"
        diff = _diff(record.read(list(wanted), load=None)[0], wanted)
        if diff:
            record.write(diff)
        return record, "updated" if diff else "unchanged"

    def base_fee_product(self, values, currency):
        return self.env["product.product"].create({
            "name": f"{self.service.name} – {values['name']}", "type": "service", "recurring_invoice": True,
            "list_price": float(values["amount"]) if currency == self.service.currency_id else 0.0,
            "default_code": f"{self.service.code}:{values['code']}", "sale_ok": True,
            "company_id": self.service.company_id.id,
        })

    def import_charges(self, values):
        """Shadow charges from the plan's limits: included quantities, no plan reference (inert)."""
        Charge = self.env["fusion.billing.charge"]
        outcomes = []
        for charge in values["charges"]:
            metric_id = self.metrics[charge["metric"]]
            existing = Charge.search([("service_id", "=", self.service.id), ("plan_code", "=", values["code"]),
                                      ("metric_id", "=", metric_id), ("plan_id", "=", False)], limit=1)
            wanted = {"included_quantity": float(charge["included_quantity"])}
            outcomes.append(self.upsert(existing, wanted, lambda: Charge.create(dict(
                wanted, service_id=self.service.id, plan_code=values["code"], metric_id=metric_id,
                plan_id=False, charge_model="standard", properties={"amount": "0"})))[1])
        return outcomes

    # ------------------------------------------------------------------ customers
    def import_users(self, rows):
        Link = self.env["fusion.billing.account.link"]
        self.seen_emails = {}                            # normalised e-mail → (source user id, partner id)
        self.seen_users = set()
        for chunk in batches(rows):
            planned = []
            for row in chunk:
                user_id = str(row["id"])
                self.seen_users.add(user_id)
                decision = self.plan(nexacloud.plan_user, row)
                self.user_state[user_id] = decision.action
                if decision.action == nexacloud.SKIP:
                    self.report("account_links", "users", user_id, "skipped", decision.reason)
                elif decision.action == nexacloud.FAIL:
                    self.report("account_links", "users", user_id, "failed", decision.reason)
                else:
                    planned.append((user_id, decision.values))
            if not planned:
                continue
            existing = {link["external_id"]: link for link in Link.search_read(
                [("service_id", "=", self.service.id), ("external_id", "in", [u for u, _v in planned])],
                ["external_id", "partner_id", "email", "stripe_customer_id", "metadata", "active"], load=None)}
            partners = self.partners_by_email({v["email"] for _u, v in planned})
            creates, updates = [], []
            for user_id, values in planned:
                first = self.seen_emails.setdefault(values["email"], (user_id, None))
                if first[0] != user_id:
                    self.lines.append(("account_links", "users", user_id, "warning",
                                       f"same e-mail as user {first[0]} ({values['email']}): linked to the same contact"))
                if user_id in existing:
                    updates.append((user_id, (existing[user_id], values)))
                else:
                    creates.append((user_id, (values, partners.get(values["email"]))))
            self.isolated("account_links", "users", updates, self._update_links, self._mark_failed_user)
            self.isolated("account_links", "users", creates, self._create_links, self._mark_failed_user)
            self.tick("users", len(chunk))

    def _mark_failed_user(self, user_id):
        self.user_state[user_id] = nexacloud.FAIL
        self.links.pop(user_id, None)

    def partners_by_email(self, emails):
        """Contacts these normalised e-mails may share: this run's, else any app account's or customer
        contact, by the identity rules of ``fusion.billing.account.link`` (never a user's contact,
        another company's or a non-customer's)."""
        found = self.shareable({email: partner for email, (_u, partner) in self.seen_emails.items()
                                if email in emails and partner})
        missing = [email for email in emails if email not in found]
        if missing:
            for email, partner in self.env["fusion.billing.account.link"]._fc_find_partners(
                    missing, self.service.company_id).items():
                found.setdefault(email, partner.id)
        return found

    def shareable(self, partner_of):
        """``partner_of`` (e-mail → partner id) without the contacts an app account may not share."""
        allowed = set(self.env["fusion.billing.account.link"]._fc_linkable(
            self.env["res.partner"].browse(set(partner_of.values())), self.service.company_id).ids)
        return {email: partner for email, partner in partner_of.items() if partner in allowed}

    @staticmethod
    def _link_metadata(values):
        return {"source": "nexacloud_import", "name": values["name"], "company_name": values["company_name"],
                "suspended": values["suspended"]}

    @staticmethod
    def _app_values(values):
        """The contact fields the import holds about a user (kept on its account)."""
        return {field: values[field] or False for field in ("name", "email", "company_name")}

    def _create_links(self, items):
        """New links; a new contact only for an e-mail no app (nor an earlier row) already has. The
        first account of a new contact created it (the import may keep it up to date); any other
        account sharing a contact is recorded in its chatter."""
        Partner, Link = self.env["res.partner"], self.env["fusion.billing.account.link"]
        emails = {v["email"] for _i, (v, _p) in items}
        partner_of = {values["email"]: partner for _u, (values, partner) in items if partner}
        partner_of.update(self.shareable({email: partner for email, (_u, partner) in self.seen_emails.items()
                                          if partner and email in emails}))
        new, creator = {}, {}
        for user_id, (values, _partner) in items:
            if values["email"] not in partner_of and values["email"] not in new:
                new[values["email"]] = Link._fc_new_partner_values(
                    {"name": values["name"], "email": values["email"], "company_name": values["company_name"]},
                    self.service, values["email"])
                creator[user_id] = values["email"]
        created = Partner.create(list(new.values()))
        snapshots = {partner.id: Link._fc_partner_snapshot(partner) for partner in created}
        for email, partner in zip(new, created):
            partner_of[email] = partner.id
        links = Link.create([dict({
            "service_id": self.service.id, "external_id": user_id, "partner_id": partner_of[values["email"]],
            "email": values["email"], "stripe_customer_id": values["stripe_customer_id"],
            "metadata": self._link_metadata(values), "app_values": self._app_values(values)},
            **({"partner_created": True, "partner_synced": snapshots[partner_of[values["email"]]]}
               if user_id in creator else {})) for user_id, (values, _partner) in items])
        links.filtered(lambda link: link.external_id not in creator)._fc_record_merge()

        def remember():
            self.count("partners", "created", len(new))
            self.count("partners", "unchanged", len(items) - len(new))
            self.count("account_links", "created", len(links))
            for (user_id, (values, _partner)), link in zip(items, links):
                self.links[user_id] = (link.id, partner_of[values["email"]])
                self.seen_emails[values["email"]] = (self.seen_emails[values["email"]][0], partner_of[values["email"]])
        return remember

    def _update_links(self, items):
        """Existing links: link fields follow the source; the contact's name/company only change when
        they changed at the source since the last import, and only on a contact this account created
        that nobody edited or shares (otherwise they stay on the account, shown for review)."""
        Link = self.env["fusion.billing.account.link"]
        outcomes = []
        for user_id, (current, values) in items:
            diff = _diff(current, {"email": values["email"], "stripe_customer_id": values["stripe_customer_id"],
                                   "metadata": self._link_metadata(values), "active": True})
            previous = current["metadata"] or {}
            partner_diff = {field: values[field] or False for field in ("name", "company_name")
                            if previous.get(field) != values[field]}
            link = Link.browse(current["id"])
            if diff:
                link.write(diff)
            written = link._fc_take_app_values(partner_diff) if partner_diff else False
            outcomes.append((user_id, current, values, bool(diff), written))

        def remember():
            for user_id, current, values, link_changed, partner_changed in outcomes:
                self.links[user_id] = (current["id"], current["partner_id"])
                first_user, partner = self.seen_emails[values["email"]]
                self.seen_emails[values["email"]] = (first_user, partner or current["partner_id"])
                self.count("account_links", "updated" if link_changed else "unchanged")
                self.count("partners", "updated" if partner_changed else "unchanged")
        return remember

    # ------------------------------------------------------------------ subscriptions
    def import_subscriptions(self, rows):
        Order = self.env["sale.order"]
        self.seen_subs = set()
        plan_records = self.env["sale.subscription.plan"].browse(set(self.plans.values()))
        plan_by_record = {plan.id: plan for plan in plan_records}
        # Resolved (and created if needed) outside the batch savepoints, which may roll back.
        pricelists = {currency: self.service._fc_pricelist(currency).id
                      for currency in {plan._fc_currency() for plan in plan_records}}
        self.pricelist_of = {plan.id: pricelists[plan._fc_currency()] for plan in plan_records}
        self.base_fee_line = {plan.id: plan._fc_base_fee_line_values() for plan in plan_records if plan.x_fc_product_id}
        for chunk in batches(rows):
            planned, never_started = [], []
            for row in chunk:
                sub_id = str(row["id"])
                self.seen_subs.add(sub_id)
                decision = self.plan(nexacloud.plan_subscription, row, self.user_state, self.plan_state)
                self.sub_state[sub_id] = decision.action
                if decision.action == nexacloud.IMPORT:
                    planned.append((sub_id, decision.values))
                    if decision.values["trial_end"]:
                        self.trials.add(sub_id)
                else:
                    if decision.code == "user_deleted" and nexacloud.still_billed_by_stripe(row):
                        self.count_monthly(self.deleted_users_billed, row)
                    elif decision.code == "incomplete":
                        self.count_monthly(self.incomplete_skipped, row)
                        never_started.append(sub_id)
                    self.report("subscriptions", "subscriptions", sub_id,
                                "skipped" if decision.action == nexacloud.SKIP else "failed", decision.reason)
            self.report_never_started_drafts(never_started)
            existing = {}
            for order in Order.search_read(
                    [("x_fc_service_id", "=", self.service.id), ("x_fc_external_id", "in", [s for s, _v in planned])],
                    ["x_fc_external_id", "state", "plan_id", "partner_id", "x_fc_account_link_id",
                     "x_fc_source_status", "x_fc_stripe_subscription_id", "start_date", "next_invoice_date",
                     "x_fc_trial_end", "end_date"], order="id", load=None):
                existing[order["x_fc_external_id"]] = order  # the latest order wins
            creates, updates = [], []
            for sub_id, values in planned:
                link_id, partner_id = self.links[values["user_id"]]
                plan = plan_by_record[self.plans[values["plan_id"]]]
                wanted = {
                    "partner_id": partner_id, "x_fc_account_link_id": link_id, "plan_id": plan.id,
                    "x_fc_source_status": values["status"],
                    "x_fc_stripe_subscription_id": values["stripe_subscription_id"],
                    "start_date": values["start_date"], "next_invoice_date": values["next_invoice_date"],
                    "x_fc_trial_end": values["trial_end"], "end_date": values["end_date"],
                }
                current = existing.get(sub_id)
                if current and current["state"] not in ("draft", "sent"):
                    self.report("subscriptions", "subscriptions", sub_id, "skipped",
                                "already confirmed in Odoo (live): the import leaves it alone")
                    self.sub_state[sub_id] = nexacloud.SKIP
                elif current:
                    updates.append((sub_id, (current, wanted, plan)))
                else:
                    creates.append((sub_id, (wanted, plan)))
            self.isolated("subscriptions", "subscriptions", updates, self._update_subs, self._mark_failed_sub)
            self.isolated("subscriptions", "subscriptions", creates, self._create_subs, self._mark_failed_sub)
            self.tick("subscriptions", len(chunk))

    def count_monthly(self, figures, row):
        """Count a skipped subscriptions row and its plan's price per month into ``figures``."""
        amount, currency = self.plan_monthly.get(row["plan_id"], (None, None))
        figures["count"] += 1
        if amount is not None:
            figures["monthly"][currency] += amount

    def report_never_started_drafts(self, sub_ids):
        """Drafts an earlier import copied from subscriptions that never started: kept, and said to
        stay drafts (activation never confirms what Stripe does not bill)."""
        if not sub_ids:
            return
        for order in self.env["sale.order"].search_read(
                [("x_fc_service_id", "=", self.service.id), ("x_fc_external_id", "in", sub_ids),
                 ("state", "in", ("draft", "sent")), ("x_fc_source_status", "in", nexacloud.NOT_STARTED_STATUSES)],
                ["x_fc_external_id"], load=None):
            self.lines.append(("subscriptions", "subscriptions", order["x_fc_external_id"], "warning",
                               "copied as a draft by an earlier import; Stripe does not bill it, so activation "
                               "leaves it a draft"))

    @property
    def trials_imported(self):
        """Trialing subscriptions whose copy is in Odoo after this run."""
        return len(self.trials & set(self.subs))

    def _mark_failed_sub(self, sub_id):
        self.sub_state[sub_id] = nexacloud.FAIL
        self.subs.pop(sub_id, None)

    def _order_values(self, sub_id, wanted, plan):
        # The plan's base-fee line, priced by its native recurring price: the draft shows what Odoo
        # will bill, and is billable only once activated.
        values = dict(wanted, x_fc_service_id=self.service.id, x_fc_external_id=sub_id,
                      company_id=self.service.company_id.id, pricelist_id=self.pricelist_of[plan.id],
                      order_line=[Command.create(self.base_fee_line[plan.id])] if plan.id in self.base_fee_line else [])
        if self.env.context.get("fusion_billing_dry_run"):
            values["name"] = "/"  # no sequence number is consumed by a dry run
        return values

    def _create_subs(self, items):
        orders = self.env["sale.order"].create([self._order_values(sub_id, wanted, plan)
                                                for sub_id, (wanted, plan) in items])
        anchors = [order._fc_anchor() for order in orders]

        def remember():
            self.count("subscriptions", "created", len(orders))
            for (sub_id, (_wanted, plan)), order, anchor in zip(items, orders, anchors):
                self.subs[sub_id] = (order.id, anchor, plan.id)
        return remember

    def _update_subs(self, items):
        Order = self.env["sale.order"]
        outcomes = []
        for sub_id, (current, wanted, plan) in items:
            diff = _diff(current, wanted)
            order = Order.browse(current["id"])
            if diff:
                if "plan_id" in diff:  # the new plan's base fee replaces the old one's
                    diff["order_line"] = [Command.unlink(line.id) for line in order.order_line] + (
                        [Command.create(self.base_fee_line[plan.id])] if plan.id in self.base_fee_line else [])
                order.write(diff)
            outcomes.append((sub_id, order.id, order._fc_anchor(), plan.id, bool(diff)))

        def remember():
            for sub_id, order_id, anchor, plan_id, changed in outcomes:
                self.count("subscriptions", "updated" if changed else "unchanged")
                self.subs[sub_id] = (order_id, anchor, plan_id)
        return remember

    # ------------------------------------------------------------------ deployments → usage baselines
    def import_deployments(self, rows):
        totals, contributors = {}, defaultdict(int)
        for row in rows:
            decision = self.plan(nexacloud.plan_deployment, row, self.sub_state)
            if decision.action == nexacloud.IMPORT:
                nexacloud.add_allocation(totals, decision)
                contributors[decision.values["subscription_id"]] += 1
            else:
                self.report("deployments", "deployments", row["id"],
                            "skipped" if decision.action == nexacloud.SKIP else "failed", decision.reason)
        outcomes = self.write_baselines(totals)
        for sub_id, number in contributors.items():
            self.count("deployments", outcomes.get(sub_id, "unchanged"), number)

    def write_baselines(self, totals):
        """Upsert one import baseline per (subscription, allocation metric) for its current period.

        Returns {source subscription id: "created" | "updated" | "unchanged" | "failed"} (the
        strongest change). Subscriptions are written in batches, isolated like every other row:
        one whose baselines cannot be written fails alone, reported with its reason.
        """
        today = fields.Date.context_today(self.service)
        items = []
        for sub_id, allocation in totals.items():
            try:
                order_id, anchor, plan_id = self.subs[sub_id]
                unit, value = self.plan_period[plan_id]
                start, end = periods.period_bounds(anchor, unit, value, max(today, anchor))
            except Exception as error:  # noqa: BLE001 — e.g. a period beyond the calendar: this row only
                self.report("usage_baselines", "deployments", sub_id, "failed", _reason(error))
                continue
            items.append((sub_id, [((order_id, self.metrics[metric], start), end, float(units))
                                   for metric, units in allocation.items()]))
        outcomes = {sub_id: "failed" for sub_id in totals}
        for chunk in batches(items, 700):
            self.isolated("usage_baselines", "deployments", chunk,
                          lambda batch: self._write_baseline_batch(batch, outcomes), lambda _sub_id: None)
        self.env["fusion.billing.usage"].invalidate_model()
        return outcomes

    def _write_baseline_batch(self, items, outcomes):
        cr, now, uid = self.env.cr, fields.Datetime.now(), self.env.uid
        wanted = {key: (sub_id, end, units) for sub_id, baselines in items for key, end, units in baselines}
        orders = self.env["sale.order"].browse({key[0] for key in wanted})
        owner = {order.id: (order.partner_id.id, order.company_id.id) for order in orders}
        cr.execute("""SELECT subscription_id, metric_id, period_start, id, quantity, source
                        FROM fusion_billing_usage
                       WHERE (subscription_id, metric_id, period_start) IN %s""", [tuple(wanted)])
        current = {(r[0], r[1], r[2]): r[3:] for r in cr.fetchall()}
        inserts, results, skipped = [], [], []
        for key, (sub_id, end, units) in wanted.items():
            row = current.get(key)
            if row is None:
                inserts.append(key + (end, units, self.service.id) + owner[key[0]] + (now, now, uid, uid))
                outcome = "created"
            elif row[2] != "import":
                skipped.append(sub_id)
                continue
            elif float_compare(row[1], units, precision_digits=6):
                cr.execute("UPDATE fusion_billing_usage SET quantity = %s, write_date = %s, write_uid = %s "
                           "WHERE id = %s", [units, now, uid, row[0]])
                outcome = "updated"
            else:
                outcome = "unchanged"
            results.append((sub_id, outcome))
        if inserts:
            cr.execute("""
                INSERT INTO fusion_billing_usage (subscription_id, metric_id, period_start, period_end, quantity,
                       service_id, partner_id, company_id, create_date, write_date, create_uid, write_uid,
                       source, state, events_count)
                VALUES """ + ", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'import', 'open', 0)"]
                                       * len(inserts)), [value for row in inserts for value in row])

        def remember():
            rank = {"failed": -1, "unchanged": 0, "updated": 1, "created": 2}
            for sub_id in skipped:
                self.report("usage_baselines", "deployments", sub_id, "skipped",
                            "the app already reported this period's usage: its figures are kept")
                outcomes[sub_id] = max(outcomes[sub_id], "unchanged", key=rank.get)
            for sub_id, outcome in results:
                self.count("usage_baselines", outcome)
                outcomes[sub_id] = max(outcomes[sub_id], outcome, key=rank.get)
        return remember

    # ------------------------------------------------------------------ removed at the source
    def report_removed(self):
        """Odoo records whose source row disappeared: reported, never deleted."""
        links = self.env["fusion.billing.account.link"].search_read(
            [("service_id", "=", self.service.id)], ["external_id"], load=None)
        for link in links:
            if link["external_id"] not in self.seen_users:
                self.lines.append(("account_links", "users", link["external_id"], "warning",
                                   "no longer in NexaCloud: kept in Odoo"))
        orders = self.env["sale.order"].search_read(
            [("x_fc_service_id", "=", self.service.id), ("x_fc_external_id", "!=", False)],
            ["x_fc_external_id"], load=None)
        for order in orders:
            if order["x_fc_external_id"] not in self.seen_subs:
                self.lines.append(("subscriptions", "subscriptions", order["x_fc_external_id"], "warning",
                                   "no longer in NexaCloud: kept in Odoo"))


def _diff(current, wanted):
    """The ``wanted`` values that differ from ``current`` (a read() dict)."""
    return {key: value for key, value in wanted.items() if not _same(current[key], value)}


def _same(current, wanted):
    if isinstance(wanted, float) or isinstance(current, float):
        return float_compare(current or 0.0, wanted or 0.0, precision_digits=6) == 0
    return (current or False) == (wanted or False)


def _reason(error):
    text = getattr(error, "args", [str(error)])
    text = str(text[0]) if text else error.__class__.__name__
    return " ".join(text.split())[:500] or error.__class__.__name__
