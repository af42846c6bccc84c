"""Fields of native models that only code writes: what bills (a usage line's kind, quantity and
price, whether it awaits its invoice), how usage periods are closed, when an app subscription ended,
which app an invoice belongs to (that app then lists it, downloads it and gets its webhooks).

A person writing them over RPC (or on a form) is refused, as the account link's ``CODE_FIELDS``
are. Code writes them either as superuser or, when it works on behalf of its caller (the API's
technical user, a salesperson closing a subscription), in ``as_code(records)``: the caller's own
environment (access rights and record rules still apply) marked with a key that only Python code
can set, since no RPC context (JSON or XML-RPC) can carry this module's object (checked by identity).
"""
from odoo.exceptions import AccessError

class _CodeMarker(str):
    """A string (whatever serialises a context still can), recognised only as this very object: a
    context that went through JSON, XML-RPC or a copy holds a plain string, which is not code."""


_CONTEXT_KEY = "fusion_billing_code_write"
_CODE = _CodeMarker("code")


def as_code(records):
    """``records`` whose writes of code-only fields are allowed (see the module docstring)."""
    return records.with_context(**{_CONTEXT_KEY: _CODE})


def is_code(env):
    return env.su or env.context.get(_CONTEXT_KEY) is _CODE


def changed(records, vals, fnames, create=False):
    """The fields of ``fnames`` that ``vals`` changes on ``records`` (``create``: any value set)."""
    touched = fnames & set(vals)
    if create:
        return {name for name in touched if vals[name]}
    found = set()
    for name in touched:
        field = records._fields[name]
        for record in records:
            if field.convert_to_record(field.convert_to_cache(vals[name], record), record) != record[name]:
                found.add(name)
                break
    return found


def check_code_fields(records, vals_list, fnames, create=False):
    """Refuse a person's create (``create``: ``records`` is the empty model) or write of ``records``
    that changes code-only ``fnames``; writing a field's current value is no change."""
    if is_code(records.env) or not (create or records):
        return
    touched = set()
    for vals in vals_list:
        touched |= changed(records, vals, fnames, create)
    if touched:
        names = ", ".join(sorted(records._fields[name].string for name in touched))
        raise AccessError(records.env._(
            "Only Odoo's billing writes these fields (%(fields)s) of %(model)s.",
            fields=names, model=records._description))
