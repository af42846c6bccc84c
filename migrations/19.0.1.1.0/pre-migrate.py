"""19.0.1.1.0: a plan's base fee becomes its native recurring price (a price rule with the plan).

The stored ``x_fc_amount`` column is kept aside before the field turns computed, so that the
post-migration can write each plan's fee into its price rule."""


def migrate(cr, version):
    cr.execute("""SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'sale_subscription_plan' AND column_name = 'x_fc_amount'""")
    if cr.fetchone():
        cr.execute("ALTER TABLE sale_subscription_plan RENAME COLUMN x_fc_amount TO x_fc_amount_before_1_1")
