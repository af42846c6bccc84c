from odoo import api, models


class AccountAnalyticDistributionModel(models.Model):
    _inherit = "account.analytic.distribution.model"

    @api.model
    def _get_distribution(self, vals):
        """Within a period close, a batch's usage lines share few criteria (charge product,
        customer, company): each is looked up once in the batch's memo (context
        ``fc_distribution_memo``) instead of once per order line and invoice line."""
        memo = self.env.context.get("fc_distribution_memo")
        if memo is None:
            return super()._get_distribution(vals)
        key = repr(sorted(vals.items()))
        if key not in memo:
            memo[key] = super()._get_distribution(vals)
        return dict(memo[key])
