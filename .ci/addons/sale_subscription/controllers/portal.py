# TEST-ONLY STAND-IN (see ../../README.md): the route is the stand-in's own; only the behaviour
# follows DOC closing.rst "Customer view" (Close Subscription with a pre-configured reason).
from odoo import http
from odoo.exceptions import AccessError, MissingError
from odoo.http import request

from odoo.addons.portal.controllers.portal import CustomerPortal


class SubscriptionPortal(CustomerPortal):

    @http.route("/my/subscriptions/<int:order_id>/close", type="http", auth="public", methods=["POST"], csrf=False)
    def stand_in_close(self, order_id, access_token=None, close_reason_id=None, **_kw):
        try:
            order = self._document_check_access("sale.order", order_id, access_token=access_token)
        except (AccessError, MissingError):
            return request.redirect("/my")
        order._stand_in_portal_close(int(close_reason_id) if close_reason_id else None)
        return request.redirect(order.get_portal_url())
