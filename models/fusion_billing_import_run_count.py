from odoo import fields, models

from ..services.nexacloud_import import ENTITY_LABELS


class FusionBillingImportRunCount(models.Model):
    """What one import run did to one kind of record: created, updated, unchanged, skipped, failed."""

    _name = "fusion.billing.import.run.count"
    _description = "NexaCloud Import Run: Counts per Entity"
    _order = "run_id, sequence"

    run_id = fields.Many2one("fusion.billing.import.run", required=True, ondelete="cascade", index=True)
    sequence = fields.Integer()
    entity = fields.Selection(list(ENTITY_LABELS.items()), required=True)
    created = fields.Integer()
    updated = fields.Integer()
    unchanged = fields.Integer()
    skipped = fields.Integer()
    failed = fields.Integer()
