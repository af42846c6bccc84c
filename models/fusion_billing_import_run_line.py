from odoo import fields, models

from ..services.nexacloud_import import ENTITY_LABELS


class FusionBillingImportRunLine(models.Model):
    """A source row an import run reports: failed (with why), skipped on purpose, or a warning."""

    _name = "fusion.billing.import.run.line"
    _description = "NexaCloud Import Run: Reported Row"
    _order = "run_id desc, outcome, entity, source_id"

    run_id = fields.Many2one("fusion.billing.import.run", required=True, ondelete="cascade", index=True)
    entity = fields.Selection(list(ENTITY_LABELS.items()), required=True)
    source_table = fields.Char(required=True)
    source_id = fields.Char(string="Source ID", required=True)
    outcome = fields.Selection([("failed", "Failed"), ("skipped", "Skipped"), ("warning", "Warning")],
                               required=True)
    reason = fields.Char(required=True)
