"""API keys for services: generated once, stored as a hash, verified in constant time.

A key looks like ``fcb_<prefix>_<secret>``:

* ``prefix`` (8 lowercase hex chars) is not secret; it is stored in clear so the
  key row can be found with an indexed lookup instead of hashing every row.
* ``secret`` (43 url-safe chars, 256 bits) never leaves the generating request.

Keys carry 256 bits of entropy, so a single SHA-256 is the right hash (as for
GitHub or Stripe tokens): a slow password hash would add nothing but latency on
every API call.
"""
import hashlib
import hmac
import re
import secrets

KEY_SCHEME = "fcb"
PREFIX_LENGTH = 8
# The whole key in its alphabet: anything else (a NUL, a surrogate, a space) never reaches a lookup.
KEY_SHAPE = re.compile(rf"{KEY_SCHEME}_([0-9a-f]{{{PREFIX_LENGTH}}})_[A-Za-z0-9_-]+")


class MalformedKey(ValueError):
    """The presented token is not shaped like one of our keys."""


def generate_key():
    """Return ``(plaintext, prefix, key_hash)`` for a new key."""
    prefix = secrets.token_hex(PREFIX_LENGTH // 2)
    plaintext = f"{KEY_SCHEME}_{prefix}_{secrets.token_urlsafe(32)}"
    return plaintext, prefix, hash_key(plaintext)


def hash_key(plaintext):
    """Hex SHA-256 of the whole key (prefix included, so a prefix swap fails)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def split_key(plaintext):
    """Return the lookup prefix of ``plaintext`` or raise :class:`MalformedKey`: only
    ``fcb_<8 lowercase hex>_<url-safe base64>`` is a key."""
    if not isinstance(plaintext, str):
        raise MalformedKey("key must be a string")
    shape = KEY_SHAPE.fullmatch(plaintext)
    if not shape:
        raise MalformedKey("not a Fusion Billing key")
    return shape.group(1)


def verify_key(plaintext, key_hash):
    """Constant-time comparison of ``plaintext`` against a stored hash."""
    if not plaintext or not key_hash:
        return False
    return hmac.compare_digest(hash_key(plaintext), key_hash)


def bearer_token(authorization_header):
    """Extract the token of an ``Authorization: Bearer <token>`` header (or ``None``).

    Like Lago, the second whitespace-separated word is the token.
    """
    if not authorization_header:
        return None
    parts = authorization_header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]
