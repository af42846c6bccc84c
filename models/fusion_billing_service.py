import secrets

from odoo import Command, api, fields, models
from odoo.exceptions import AccessError, UserError, ValidationError

from ..core import nexacloud, outbound, periods, reconcile
from ..services.service_overview import ServiceOverview


class FusionBillingService(models.Model):
    """One source app (NexaCloud, NexaDesk, NexaMaps…) billed by this Odoo.

    A service owns its customers' account links, its metrics and charges, its API
    keys and its webhook endpoint. In *shadow* mode everything is computed and
    recorded but nothing is confirmed, posted, e-mailed or charged.
    """

    _name = "fusion.billing.service"
    _description = "Billing Service (source app)"
    _inherit = ["mail.thread"]
    _order = "sequence, name, id"
    _check_company_auto = True

    name = fields.Char(required=True, tracking=True)
    code = fields.Char(
        required=True, tracking=True,
        help="Short technical code of the app, e.g. 'nexacloud'. Used in logs and webhook payloads.")
    sequence = fields.Integer(default=10)
    active = fields.Boolean(default=True, tracking=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, tracking=True)
    currency_id = fields.Many2one(
        "res.currency", required=True, tracking=True,
        default=lambda self: self.env.ref("base.CAD", raise_if_not_found=False) or self.env.company.currency_id,
        help="Currency of this app's catalog and invoices (CAD normally).")
    billing_mode = fields.Selection(
        [("shadow", "Shadow"), ("live", "Live")],
        required=True, default="shadow", tracking=True,
        help="Shadow: compute and record everything, confirm/post/e-mail/charge nothing (dual-run). "
             "Live: Odoo bills this app's customers for real.")
    organization_id = fields.Char(
        string="Organization ID", readonly=True, copy=False,
        default=lambda self: secrets.token_hex(16),
        help="Identifier sent as organization_id in webhook envelopes (Lago compatibility).")

    webhook_url = fields.Char(
        string="Webhook URL", tracking=True,
        help="Where lifecycle webhooks are POSTed for this app. Empty: webhooks are recorded, not sent.")
    webhook_secret = fields.Char(
        string="Webhook Signing Secret", copy=False,
        groups="fusion_centralize_billing.group_fusion_billing_manager",
        help="HMAC-SHA256 key for the X-Lago-Signature header.")
    webhook_blocked_reason = fields.Char(
        compute="_compute_webhook_blocked_reason",
        help="Why this live service's webhooks are queued but not sent, if they are not.")
    webhook_event_types = fields.Char(
        help="Comma-separated webhook types this app wants (e.g. 'invoice.created,subscription.started'). "
             "Empty: every type.")

    events_errors_until = fields.Datetime(
        readonly=True, copy=False, help="Unbillable events up to this time were reported in an events.errors webhook.")
    events_errors_failures = fields.Integer(
        readonly=True, copy=False, help="Hourly events.errors digests that failed in a row (at 3 the window is skipped).")

    api_key_ids = fields.One2many("fusion.billing.api.key", "service_id", string="API Keys")
    api_user_id = fields.Many2one(
        "res.users", string="API User", readonly=True, copy=False, ondelete="restrict",
        help="Technical user every API call of this app runs as (never the superuser): Fusion Billing "
             "User rights, this service's company only, and record rules that confine it to this service. "
             "Archived, like OdooBot: it cannot log in and takes no seat.")
    account_link_ids = fields.One2many("fusion.billing.account.link", "service_id", string="Customers")
    metric_ids = fields.One2many("fusion.billing.metric", "service_id", string="Billable Metrics")
    account_link_count = fields.Integer(compute="_compute_counts")
    subscription_count = fields.Integer(compute="_compute_counts")
    reconciliation_run_ids = fields.One2many("fusion.billing.reconciliation.run", "service_id",
                                             string="Reconciliation Runs")
    last_reconciliation_run_id = fields.Many2one(
        "fusion.billing.reconciliation.run", string="Latest Reconciliation", compute="_compute_last_reconciliation")
    last_reconciliation_failed = fields.Boolean(compute="_compute_last_reconciliation")
    last_reconciliation_summary = fields.Html(compute="_compute_last_reconciliation", sanitize=False,
                                              string="Latest Reconciliation Figures")
    overview_html = fields.Html(
        string="Overview", compute="_compute_overview_html", sanitize=False,
        help="The current periods so far (usage and what Odoo would bill per metric), unbillable events, "
             "webhook failures, the latest reconciliation and the events received per day.")
    activation_progress = fields.Char(
        compute="_compute_activation_progress",
        help="While an activation of the imported subscriptions is queued or running: how far it is.")

    _code_company_uniq = models.Constraint(
        "UNIQUE(company_id, code)", "A service code must be unique per company.")

    @api.depends("billing_mode", "webhook_url", "webhook_secret")
    def _compute_webhook_blocked_reason(self):
        for service in self:
            blocked = service.billing_mode == "live" and service.webhook_url and not service.sudo().webhook_secret
            service.webhook_blocked_reason = self.env._(
                "Webhooks are queued but not sent: this service has no signing secret (Odoo never sends "
                "an unsigned webhook). An administrator generates one with New Webhook Secret.") if blocked else False

    @api.constrains("webhook_url")
    def _check_webhook_url(self):
        """https to public addresses only, checked after DNS (and again at each delivery)."""
        from ..services.webhook_delivery import allow_loopback  # noqa: PLC0415 (services import models)
        loopback = allow_loopback(self.env)
        for service in self.filtered("webhook_url"):
            try:
                outbound.check_url(service.webhook_url, allow_loopback=loopback)
            except outbound.UnsafeUrl as error:
                raise ValidationError(self.env._("Webhook URL of %(service)s refused: %(reason)s.",
                                                 service=service.name, reason=error)) from None

    def _compute_counts(self):
        links = dict(self.env["fusion.billing.account.link"]._read_group(
            [("service_id", "in", self.ids)], ["service_id"], ["__count"]))
        subs = dict(self.env["sale.order"]._read_group(
            [("x_fc_service_id", "in", self.ids), ("is_subscription", "=", True)],
            ["x_fc_service_id"], ["__count"]))
        for service in self:
            service.account_link_count = links.get(service, 0)
            service.subscription_count = subs.get(service, 0)

    @api.depends("reconciliation_run_ids")
    def _compute_last_reconciliation(self):
        for service in self:
            run = service._fc_latest_reconciliation_run() if service.id else service.reconciliation_run_ids
            service.last_reconciliation_run_id = run
            service.last_reconciliation_failed = run.state == "failed"
            service.last_reconciliation_summary = run.summary_html if run else False

    def _compute_activation_progress(self):
        runs = self.env["fusion.billing.activation.run"].sudo().search(
            [("service_id", "in", self.ids), ("state", "=", "queued")])
        for service in self:
            run = runs.filtered(lambda r, s=service: r.service_id == s)[:1]
            if not run:
                service.activation_progress = False
            elif not run.handled_count:
                service.activation_progress = self.env._(
                    "Activation of the imported subscriptions queued by %(user)s: it starts in a moment.",
                    user=run.user_id.name)
            else:
                service.activation_progress = self.env._(
                    "Activating the imported subscriptions (asked by %(user)s): %(done)s of %(total)s drafts handled "
                    "so far. Reload to follow; the chatter gives the outcome.",
                    user=run.user_id.name, done=run.handled_count, total=run.draft_count)

    def _fc_latest_reconciliation_run(self, period_start=None):
        """The latest reconciliation run of this service (of ``period_start`` if given), failed or not.
        Its ``line_ids`` hold the figures per reason (count, amount, change since the previous run)."""
        self.ensure_one()
        domain = [("service_id", "=", self.id)] + ([("period_start", "=", period_start)] if period_start else [])
        return self.env["fusion.billing.reconciliation.run"].search(domain, limit=1)

    def action_view_reconciliation_runs(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "fusion_centralize_billing.fusion_billing_reconciliation_run_action")
        action["domain"] = [("service_id", "=", self.id)]
        return action

    def action_view_activation_orders(self):
        """What the activations of this service did with each draft, failures first to look at."""
        self.ensure_one()
        return {"type": "ir.actions.act_window", "name": self.env._("Activation of %s", self.name),
                "res_model": "fusion.billing.activation.run.line", "view_mode": "list",
                "domain": [("run_id.service_id", "=", self.id)],
                "context": {"search_default_group_run": 1, "search_default_group_outcome": 1}}

    def _compute_overview_html(self):
        for service in self:
            if not service.id:
                service.overview_html = False
                continue
            service.overview_html = self.env["ir.qweb"]._render(
                "fusion_centralize_billing.service_overview", service._fc_overview_values())

    def _fc_overview_values(self):
        """The overview's figures as plain values (see services/service_overview.py)."""
        return ServiceOverview(self).values()

    def _fc_window_action(self, name, model, domain, **extra):
        return dict({"type": "ir.actions.act_window", "name": name, "res_model": model,
                     "view_mode": "list,form", "domain": domain}, **extra)

    def action_view_current_usage(self):
        self.ensure_one()
        today = fields.Date.context_today(self)
        return self._fc_window_action(
            self.env._("Current usage of %s", self.name), "fusion.billing.usage",
            [("service_id", "=", self.id), ("period_start", "<=", today), ("period_end", ">", today)],
            view_mode="list,pivot,graph,form", context={"search_default_by_metric": 1})

    def action_view_unbillable_events(self):
        self.ensure_one()
        return self._fc_window_action(self.env._("Unbillable events of %s", self.name), "fusion.billing.event",
                                      [("service_id", "=", self.id), ("state", "!=", "processed")])

    def action_view_webhook_failures(self):
        self.ensure_one()
        return self._fc_window_action(self.env._("Webhook failures of %s", self.name), "fusion.billing.webhook",
                                      [("service_id", "=", self.id), ("state", "in", ("failed", "retrying"))])

    def action_view_latest_reconciliation(self):
        self.ensure_one()
        latest = self.env["fusion.billing.reconciliation"].search(
            [("service_id", "=", self.id)], order="period_start desc", limit=1).period_start
        return self._fc_window_action(self.env._("Reconciliation of %s", self.name), "fusion.billing.reconciliation",
                                      [("service_id", "=", self.id), ("period_start", "=", latest)])

    def write(self, vals):
        result = super().write(vals)
        if "company_id" in vals:
            for service in self.filtered("api_user_id"):
                service.api_user_id.sudo().write({"company_id": service.company_id.id,
                                                  "company_ids": [Command.set(service.company_id.ids)]})
        return result

    # ------------------------------------------------------------------ API technical user
    def _fc_api_user(self):
        """The technical user this service's API calls run as. Created with the service's first API
        key (creating a user is not free: Odoo subscribes internal users to digests, channels…);
        created here if missing, e.g. for a key made before API users existed."""
        self.ensure_one()
        return self.sudo().api_user_id or self._fc_create_api_user()

    def _fc_create_api_user(self):
        """Create this service's API user: in the Fusion Billing User group and the service's company
        only, archived (no login, no seat). The global record rules of ``security/
        fusion_billing_api_rules.xml`` confine a user with ``x_fc_api_service_id`` to that service."""
        self.ensure_one()
        user = self.env["res.users"].sudo().with_context(
            active_test=True, no_reset_password=True, tracking_disable=True).create({
            "name": self.env._("%s API", self.name),
            "login": f"fusion_billing_api_{self.id}",
            "active": False,
            "company_id": self.company_id.id,
            "company_ids": [Command.set(self.company_id.ids)],
            "group_ids": [Command.set([self.env.ref("fusion_centralize_billing.group_fusion_billing_user").id])],
            "x_fc_api_service_id": self.id,
        })
        self.sudo().api_user_id = user
        return user

    @api.model
    def _fc_ensure_api_users(self):
        """Install/upgrade: every service with an API key has its API user."""
        for service in self.sudo().with_context(active_test=False).search([
                ("api_user_id", "=", False), ("api_key_ids", "!=", False)]):
            service._fc_create_api_user()

    def _is_shadow(self):
        self.ensure_one()
        return self.billing_mode == "shadow"

    def _fc_wants_webhook(self, webhook_type):
        """Whether this app subscribed to ``webhook_type`` (no list = every type)."""
        self.ensure_one()
        wanted = {t.strip() for t in (self.webhook_event_types or "").split(",") if t.strip()}
        return not wanted or webhook_type in wanted

    def action_generate_api_key(self):
        """Create a key and show its plaintext once; only its hash is stored."""
        self.ensure_one()
        self._fc_check_manager()
        plaintext = self.env["fusion.billing.api.key"]._generate(self)
        return self.env["fusion.billing.api.key.show"]._action_show(plaintext)

    def action_generate_webhook_secret(self):
        self.ensure_one()
        self.check_access("write")
        if not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_manager"):
            raise UserError(self.env._("Only Fusion Billing administrators can set webhook secrets."))
        self.sudo().webhook_secret = secrets.token_urlsafe(32)
        self.message_post(body=self.env._("A new webhook signing secret was generated."))
        return True

    def action_view_account_links(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("Customers"),
            "res_model": "fusion.billing.account.link",
            "view_mode": "list,form",
            "domain": [("service_id", "=", self.id)],
            "context": {"default_service_id": self.id},
        }

    def action_view_subscriptions(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("Subscriptions"),
            "res_model": "sale.order",
            "view_mode": "list,form",
            "domain": [("x_fc_service_id", "=", self.id), ("is_subscription", "=", True)],
        }

    def _fc_pricelist(self, currency=None, create=True):
        """The pricelist this service's subscriptions use: one in the service's currency (or ``currency``);
        created if there is none (``create=False``: empty then)."""
        self.ensure_one()
        currency = currency or self.currency_id
        pricelist_model = self.env["product.pricelist"].sudo()
        domain = [("currency_id", "=", currency.id), ("company_id", "in", (False, self.company_id.id))]
        found = pricelist_model.search(domain, limit=1)
        return found if found or not create else pricelist_model.create({
            "name": f"{self.name} ({currency.name})", "currency_id": currency.id, "company_id": self.company_id.id})

    # ------------------------------------------------------------------ dual run and cutover
    def _fc_check_manager(self):
        """A Fusion Billing administrator who may change these very services (record rules: their
        company), checked before anything is done on their behalf."""
        if not self.env.user.has_group("fusion_centralize_billing.group_fusion_billing_manager"):
            raise AccessError(self.env._("Only Fusion Billing administrators can do this on a service."))
        self.check_access("write")

    def _fc_source_bills(self, period_start, period_end):
        """App-side bills derived read-only from the app's own database (NexaCloud), if configured:
        how Stripe bills each subscription in the period, and why the importer would leave it out.
        An unreachable or incomplete source raises a ``UserError`` that says why."""
        self.ensure_one()
        dsn = self.env["ir.config_parameter"].sudo().get_param("fusion_billing.nexacloud_dsn")
        if self.code != "nexacloud" or not dsn:
            return {}
        try:
            with nexacloud.Source(nexacloud.normalise_dsn(dsn)[0]) as source:
                return reconcile.nexacloud_bills(
                    list(source.rows("plans")), source.rows("subscriptions"), period_start, period_end,
                    users=list(source.rows("users")), service_currency=self.currency_id.name)
        except nexacloud.SourceError as error:
            raise UserError(str(error)) from None

    def action_reconcile_last_month(self):
        """Reconcile the last calendar month now and show the rows."""
        self.ensure_one()
        first = fields.Date.context_today(self).replace(day=1)
        previous = periods.add_period(first, "month", 1, -1)
        self.env["fusion.billing.reconciliation"]._run(self, previous, first, self._fc_source_bills(previous, first))
        action = self.env["ir.actions.act_window"]._for_xml_id("fusion_centralize_billing.fusion_billing_reconciliation_action")
        action["domain"] = [("service_id", "=", self.id), ("period_start", "=", previous)]
        return action

    def action_switch_to_live(self):
        """Open the cutover confirmation, which shows the latest reconciliation figures."""
        self.ensure_one()
        self._fc_check_manager()
        return {
            "type": "ir.actions.act_window", "name": self.env._("Switch %s to live", self.name),
            "res_model": "fusion.billing.cutover.wizard", "view_mode": "form", "target": "new",
            "context": {"default_service_id": self.id},
        }

    def _fc_set_mode(self, mode, note):
        self._fc_check_manager()
        self.sudo().billing_mode = mode
        self.message_post(body=note)

    def action_switch_to_shadow(self):
        self.ensure_one()
        self._fc_set_mode("shadow", self.env._("Switched back to shadow mode by %s: Odoo stops confirming, "
                                               "posting and charging for this app.", self.env.user.name))
        return True

    def action_activate_subscriptions(self):
        """Live only: queue the confirmation of this app's imported draft subscriptions and return at
        once; the background job (``fusion.billing.activation.run``, ``services/activation.py``)
        confirms them in batches committed one by one, attaching the customer's saved payment token
        when Odoo has one, and posts the outcome here. Idempotent: confirmed ones are skipped.
        The app billed the current period: Odoo's first invoice is on the imported next invoice
        date (the next period's fee, and this period's usage from the cutover on). A trial's first
        invoice is at its end, without the trial's usage. Drafts Stripe does not bill (copied from
        an ``incomplete`` subscription: its first payment never went through) are never confirmed:
        they stay drafts, and the message says how many. The job checks again, when it runs, that
        the service is still live and that whoever pressed is (still) an administrator."""
        self.ensure_one()
        self._fc_check_manager()
        if self.billing_mode != "live":
            raise UserError(self.env._("Switch %s to live before activating its subscriptions.", self.name))
        run, created = self.env["fusion.billing.activation.run"]._queue(self)
        if created:
            title, message = self.env._("Activation queued"), self.env._(
                "%(count)s draft subscriptions queued for activation: they are confirmed in the background, batch "
                "by batch. The service shows the progress; its chatter gives the outcome when it is done.",
                count=run.draft_count)
        elif run:
            title, message = self.env._("Activation already under way"), self.env._(
                "An activation asked by %(user)s is already queued or running (%(done)s of %(total)s drafts "
                "handled): nothing more was queued. Its outcome will be in the chatter.", user=run.user_id.name,
                done=run.handled_count, total=run.draft_count)
        else:
            title, message = self.env._("Activation already under way"), self.env._(
                "Someone queued an activation of %s at the same moment: nothing more was queued. Its outcome "
                "will be in the chatter.", self.name)
        return {"type": "ir.actions.client", "tag": "display_notification", "params": {
            "title": title, "message": message, "type": "info" if created else "warning", "sticky": False,
            "next": {"type": "ir.actions.client", "tag": "soft_reload"}}}

    @api.model
    def _authenticate(self, plaintext):
        """Return the active service owning API key ``plaintext`` (sudo), or an empty recordset."""
        key = self.env["fusion.billing.api.key"].sudo()._find(plaintext)
        return key.service_id if key and key.service_id.active else self.browse()
