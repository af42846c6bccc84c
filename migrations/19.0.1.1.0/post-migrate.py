"""19.0.1.1.0: write each plan's former stored base fee into its native recurring price rule, and
mark the usage lines the former period close added to orders as billing-cycle lines (already billed),
and tell which app accounts created their contact (issue 16: only those may write it).

A plan without a base fee product or a service cannot have a price rule: its former fee is reported
(log, and the service's chatter) and kept in the column ``x_fc_amount_before_1_1`` (left in place
for them only) until someone sets the plan's product and base fee."""
import logging

from odoo import SUPERUSER_ID, api

_logger = logging.getLogger(__name__)


def migrate(cr, version):
    env = api.Environment(cr, SUPERUSER_ID, {})
    cr.execute("""SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'sale_subscription_plan' AND column_name = 'x_fc_amount_before_1_1'""")
    if cr.fetchone():
        cr.execute("SELECT id, x_fc_amount_before_1_1 FROM sale_subscription_plan WHERE x_fc_amount_before_1_1 <> 0")
        left = []
        for plan_id, amount in cr.fetchall():
            plan = env["sale.subscription.plan"].browse(plan_id)
            if plan.x_fc_product_id and plan.x_fc_service_id:
                if not plan._fc_base_fee_rules():
                    plan.x_fc_amount = amount
            else:
                left.append((plan, amount))
        report_fees_left(env, left)
        if left:
            env.flush_all()
            cr.execute("UPDATE sale_subscription_plan SET x_fc_amount_before_1_1 = NULL WHERE NOT id = ANY(%s)",
                       [[plan.id for plan, _amount in left]])
        else:
            cr.execute("ALTER TABLE sale_subscription_plan DROP COLUMN x_fc_amount_before_1_1")
    # Usage order lines of the former close (sequence 1000, linked from their usage row): billed, never again.
    cr.execute("""
        UPDATE sale_order_line line SET x_fc_line_kind = 'usage', x_fc_pending = false
          FROM fusion_billing_usage usage
         WHERE usage.invoice_line_id IS NOT NULL AND line.x_fc_line_kind IS NULL AND line.sequence = 1000
           AND line.id IN (SELECT order_line_id FROM sale_order_line_invoice_rel WHERE invoice_line_id = usage.invoice_line_id)""")

    mark_contacts_created_by_their_account(env)


def report_fees_left(env, left):
    """Plans whose former fee could not become a price rule (no base fee product or service)."""
    by_service = {}
    for plan, amount in left:
        _logger.warning("Plan %s (id %s) had a base fee of %s but no base fee product or billing service: no price "
                        "rule made; the fee is kept in sale_subscription_plan.x_fc_amount_before_1_1. Set the "
                        "plan's product, service and Base Fee.", plan.name, plan.id, amount)
        by_service.setdefault(plan.x_fc_service_id, []).append(f"{plan.name}: {amount:.2f}")
    for service, lines in by_service.items():
        if service:
            service.message_post(body=env._(
                "Upgrade to 19.0.1.1.0: these plans had a base fee but no base fee product, so no recurring price "
                "was made for them (their subscriptions are priced at the product's list price): %s. Set each "
                "plan's Base Fee Product, then its Base Fee.", "; ".join(lines)))


def mark_contacts_created_by_their_account(env):
    """Accounts made before 19.0.1.1.0 do not say whether they created their contact, so no app
    could write its contact any more. An account is taken to have created its contact when that
    contact was created in the same transaction as the account, by code (the superuser, as the
    former API and importer ran), was last written by code too (no person edited it), has no
    user, and no other account shares it. Every other account keeps its app's values for review."""
    env.cr.execute("""
        SELECT link.id FROM fusion_billing_account_link link
          JOIN res_partner partner ON partner.id = link.partner_id
         WHERE NOT COALESCE(link.partner_created, false)
           AND partner.create_date = link.create_date
           AND partner.create_uid = %(root)s AND partner.write_uid = %(root)s
           AND NOT EXISTS (SELECT 1 FROM res_users u WHERE u.partner_id = partner.id)
           AND NOT EXISTS (SELECT 1 FROM fusion_billing_account_link other
                            WHERE other.partner_id = link.partner_id AND other.id != link.id)""",
                   {"root": SUPERUSER_ID})
    links = env["fusion.billing.account.link"].browse([row[0] for row in env.cr.fetchall()])
    for link in links:
        link.sudo().write({"partner_created": True, "partner_synced": link._fc_partner_snapshot(link.partner_id)})
    return links
