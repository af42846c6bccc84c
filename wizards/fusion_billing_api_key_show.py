from odoo import api, fields, models


class FusionBillingApiKeyShow(models.AbstractModel):
    """Displays a freshly generated key once. Abstract: the plaintext is never stored."""

    _name = "fusion.billing.api.key.show"
    _description = "Show a new API key once"

    id = fields.Id()
    key = fields.Char(readonly=True)

    @api.model
    def _action_show(self, plaintext):
        return {
            "type": "ir.actions.act_window",
            "name": self.env._("New API Key"),
            "res_model": self._name,
            "view_mode": "form",
            "views": [(self.env.ref("fusion_centralize_billing.fusion_billing_api_key_show_view_form").id, "form")],
            "target": "new",
            "context": {"default_key": plaintext},
        }
