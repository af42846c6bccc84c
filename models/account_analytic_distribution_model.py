from odoo import api, models

_NO_MODELS = object()  # memo key: whether this run found no distribution model at all


class AccountAnalyticDistributionModel(models.Model):
    _inherit = "account.analytic.distribution.model"

    @api.model
    def _get_distribution(self, vals):
        """Within a period close, a batch's usage lines share few criteria (charge product,
        customer, company): each is looked up once in the batch's memo (context
        ``fc_distribution_memo``) instead of once per order line and invoice line. When no
        distribution model exists at all (the memo checks once), every lookup is empty: no search."""
        memo = self.env.context.get("fc_distribution_memo")
        if memo is None:
            return super()._get_distribution(vals)
        if _NO_MODELS not in memo:
            # Every applicable model is among these (same rules): none here, none matching any criteria.
            memo[_NO_MODELS] = not self.search_count([], limit=1)
        if memo[_NO_MODELS]:
            return {}
        key = repr(sorted(vals.items()))
        if key not in memo:
            memo[key] = super()._get_distribution(vals)
        return dict(memo[key])
