from odoo import models


class IrHttp(models.AbstractModel):
    _inherit = "ir.http"

    @classmethod
    def _handle_error(cls, exception):
        """Failures of the billing API outside its handler (e.g. a conflict left after Odoo's last
        replay) answer a Lago envelope (503 + ``Retry-After`` for conflicts), not Odoo's HTML page."""
        from ..controllers import api  # noqa: PLC0415 (controllers import the models)

        if api.is_api_request():
            return api.error_response(exception)
        return super()._handle_error(exception)
