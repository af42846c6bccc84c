from odoo import models


class AccountPartialReconcile(models.Model):
    _inherit = "account.partial.reconcile"

    def unlink(self, *args, **kwargs):
        """Removing a reconciliation (unreconcile, cancelled or reset payment) can make a paid app
        invoice unpaid again: call its unpaid hook (``account.move._invoice_unpaid_hook``)."""
        moves = (self.debit_move_id.move_id | self.credit_move_id.move_id).filtered(
            lambda move: move.x_fc_service_id and move.is_invoice() and move.payment_state in ("paid", "in_payment"))
        res = super().unlink(*args, **kwargs)
        moves = moves.exists()
        moves.filtered(lambda move: move.payment_state not in ("paid", "in_payment"))._invoice_unpaid_hook()
        return res
