import logging
from datetime import timedelta

import psycopg2

from odoo import api, fields, models

from ..core import keys
from . import batch_jobs

_logger = logging.getLogger(__name__)

# Write last-use at most this often per key, so hot API paths do not update a row per call.
LAST_USED_RESOLUTION_SECONDS = 60


class FusionBillingApiKey(models.Model):
    """A bearer key of one service. Plaintext is shown once; only a SHA-256 hash is kept."""

    _name = "fusion.billing.api.key"
    _description = "Billing Service API Key"
    _order = "service_id, create_date desc, id desc"
    _rec_name = "name"

    name = fields.Char(required=True, default=lambda self: self.env._("API key"))
    service_id = fields.Many2one("fusion.billing.service", required=True, ondelete="cascade", index=True)
    company_id = fields.Many2one(related="service_id.company_id", store=True, index=True)
    prefix = fields.Char(
        required=True, readonly=True, index=True,
        help="Non-secret start of the key (fcb_<prefix>_…), used to find it.")
    key_hash = fields.Char(
        required=True, readonly=True,
        groups="fusion_centralize_billing.group_fusion_billing_manager")
    active = fields.Boolean(default=True, help="Unticked: the key is revoked and fails at once.")
    revoked_date = fields.Datetime(readonly=True)
    last_used_date = fields.Datetime(readonly=True)

    _prefix_uniq = models.UniqueIndex("(prefix)", "API key prefixes must be unique.")

    @api.model
    def _generate(self, service):
        """Create a key for ``service`` and return its plaintext (never stored)."""
        service._fc_check_manager()  # the group, and write access to this very service
        plaintext, prefix, key_hash = keys.generate_key()
        self.sudo().create({"service_id": service.id, "prefix": prefix, "key_hash": key_hash})
        service._fc_api_user()  # the technical user the key's calls will run as
        service.message_post(body=self.env._("API key fcb_%s_… generated.", prefix))
        return plaintext

    def action_revoke(self):
        self.check_access("write")
        for key in self:
            key.service_id.message_post(body=self.env._("API key fcb_%s_… revoked.", key.prefix))
        self.write({"active": False, "revoked_date": fields.Datetime.now()})
        return True

    def action_rotate(self):
        """Generate a replacement key for the same service and revoke this one."""
        self.ensure_one()
        self.check_access("write")
        plaintext = self._generate(self.service_id)
        self.action_revoke()
        return self.env["fusion.billing.api.key.show"]._action_show(plaintext)

    @api.model
    def _find(self, plaintext):
        """Return the active key matching ``plaintext`` (constant-time hash check) and record its use."""
        try:
            prefix = keys.split_key(plaintext)
        except keys.MalformedKey:
            return self.browse()
        key = self.sudo().search_fetch([("prefix", "=", prefix)], ["key_hash", "service_id", "last_used_date"], limit=1)
        if not key or not keys.verify_key(plaintext, key.key_hash):
            return self.browse()
        key._touch()
        return key

    def _touch(self):
        """Record last use at most once a minute per key, in a short transaction of its own (READ
        COMMITTED, ``batch_jobs.side_transaction``): the request's own transaction never writes the
        key's row, so a busy key never conflicts with itself, and a failure here never fails the
        request. Concurrent requests of one key update it once: the others find it fresh or locked."""
        now = fields.Datetime.now()
        last = self.last_used_date
        if last and (now - last).total_seconds() < LAST_USED_RESOLUTION_SECONDS:
            return
        try:
            with batch_jobs.side_transaction(self.env) as env:
                env.cr.execute("""
                    UPDATE fusion_billing_api_key SET last_used_date = %s
                     WHERE id IN (SELECT id FROM fusion_billing_api_key
                                   WHERE id = %s AND (last_used_date IS NULL OR last_used_date <= %s)
                                     FOR UPDATE SKIP LOCKED)""",
                               (now, self.id, now - timedelta(seconds=LAST_USED_RESOLUTION_SECONDS)))
        except psycopg2.Error as error:
            _logger.warning("Could not record the last use of API key %s: %s", self.prefix, error)
        self.invalidate_recordset(["last_used_date"])
