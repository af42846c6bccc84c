"""Outbound webhooks in Lago's format (lago-api.md §5): envelope, exact body bytes, HMAC, retries.

The body is serialised once, stored, and the very same bytes are signed and sent on every
attempt, so ``X-Lago-Signature`` and ``X-Lago-Unique-Key`` are stable across retries.
"""
import base64
import hashlib
import hmac
import json
import random
from datetime import timedelta
from decimal import Decimal

OBJECT_TYPES = {
    "customer.created": "customer",
    "customer.updated": "customer",
    "subscription.started": "subscription",
    "subscription.updated": "subscription",
    "subscription.terminated": "subscription",
    "subscription.usage_threshold_reached": "subscription",
    "invoice.created": "invoice",
    "invoice.generated": "invoice",
    "invoice.payment_status_updated": "invoice",
    "invoice.payment_overdue": "invoice",
    "events.errors": "events_errors",
}
SUCCESS_STATUSES = frozenset({200, 201, 202, 204})

# Retry schedule: 30 s doubling to a 1 h ceiling, ±20 % jitter, 32 attempts ≈ 25 h in all,
# so a receiver down for an hour (or most of a day) loses nothing (Lago gives up after 20 s).
FIRST_DELAY_SECONDS = 30
MAX_DELAY_SECONDS = 3600
JITTER = 0.2
MAX_ATTEMPTS = 32


def envelope(webhook_type, organization_id, obj):
    """``{"webhook_type", "object_type", "organization_id", <object_type>: obj}``."""
    object_type = OBJECT_TYPES[webhook_type]
    return {"webhook_type": webhook_type, "object_type": object_type,
            "organization_id": organization_id, object_type: obj}


def body_bytes(payload):
    """Compact UTF-8 JSON: the exact bytes sent and signed."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False,
                      default=lambda value: str(value) if isinstance(value, Decimal) else value.isoformat()
                      ).encode("utf-8")


def sign(secret, body):
    """base64(HMAC-SHA256(secret, body)) — Lago's ``hmac`` signature."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(secret, body, signature):
    """Constant-time check of a received signature (what an app does)."""
    return bool(signature) and hmac.compare_digest(sign(secret, body), signature)


def headers(secret, body, unique_key):
    return {
        "Content-Type": "application/json",
        "X-Lago-Signature": sign(secret, body),
        "X-Lago-Signature-Algorithm": "hmac",
        "X-Lago-Unique-Key": unique_key,
    }


def is_success(status_code):
    return status_code in SUCCESS_STATUSES


def next_delay(attempt, rand=random.random):
    """Delay before attempt ``attempt + 1`` (``attempt`` ≥ 1 failed so far), jittered ±20 %."""
    base = min(FIRST_DELAY_SECONDS * 2 ** (attempt - 1), MAX_DELAY_SECONDS)
    return timedelta(seconds=base * (1 - JITTER + 2 * JITTER * rand()))


def schedule(rand=lambda: 0.5):
    """The delays between the MAX_ATTEMPTS attempts (for docs and tests)."""
    return [next_delay(attempt, rand) for attempt in range(1, MAX_ATTEMPTS)]
