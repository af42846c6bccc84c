from odoo import fields, models


class SaleOrder(models.Model):
    """Native subscriptions (``is_subscription``) carry which app they belong to and its id for them."""

    _inherit = "sale.order"

    x_fc_service_id = fields.Many2one(
        "fusion.billing.service", string="Billing Service", index="btree_not_null", copy=False)
    x_fc_account_link_id = fields.Many2one(
        "fusion.billing.account.link", string="App Account", index="btree_not_null", copy=False)
    x_fc_external_id = fields.Char(
        string="External Subscription ID", index="btree_not_null", copy=False,
        help="The subscription's id in the app (Lago external_id); events refer to it.")
    x_fc_source_status = fields.Char(
        string="Status in App", copy=False, help="Status in the app's own billing (e.g. Stripe's), for information.")
    x_fc_stripe_subscription_id = fields.Char(
        string="Stripe Subscription (info)", copy=False, help="Informational only: never used to charge.")
    x_fc_terminated_at = fields.Datetime(string="Terminated At", copy=False)
    x_fc_usage_ids = fields.One2many("fusion.billing.usage", "subscription_id", string="Usage")

    _x_fc_external_uniq = models.UniqueIndex(
        "(x_fc_service_id, x_fc_external_id) WHERE x_fc_external_id IS NOT NULL AND x_fc_terminated_at IS NULL",
        "This app already has a live subscription with that external id.")
