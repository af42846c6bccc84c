"""Domain errors raised by the models; the API layer (``controllers/api.py``) maps them onto
Lago's envelopes, so models never build HTTP answers or know Lago's wire format.

``details`` follow Lago's ``error_details`` shape: ``{field: [code]}`` (or keyed by batch index).
"""


class BillingError(Exception):
    """Base class of the errors a caller (API, UI) can act on."""


class NotFound(BillingError):
    """A referenced object does not exist for the caller (e.g. ``plan``, ``customer``)."""

    def __init__(self, resource):
        super().__init__(f"{resource} not found")
        self.resource = resource


class Invalid(BillingError):
    """Input that cannot be accepted; ``details`` is ``{field: [code]}``."""

    def __init__(self, details):
        super().__init__(details)
        self.details = details


class NotAllowed(BillingError):
    """The operation is not possible in the object's current state (e.g. ``no_active_subscription``)."""

    def __init__(self, code):
        super().__init__(code)
        self.code = code
