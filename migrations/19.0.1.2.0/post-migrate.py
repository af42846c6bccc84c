"""19.0.1.2.0: drafts the NexaCloud import copied from trials before it kept the trial's end get it
(``x_fc_trial_end``: their Date of Next Invoice, which the import set to the trial's end, Stripe's
first charge), so that neither the shadow bill nor activation bills the trial. Drafts copied from
``incomplete`` subscriptions need nothing: activation leaves them drafts and the shadow bill is nil."""


def migrate(cr, version):
    cr.execute("""
        UPDATE sale_order SET x_fc_trial_end = next_invoice_date
         WHERE x_fc_service_id IS NOT NULL AND x_fc_source_status = 'trialing' AND x_fc_trial_end IS NULL
           AND next_invoice_date IS NOT NULL AND state IN ('draft', 'sent')""")
