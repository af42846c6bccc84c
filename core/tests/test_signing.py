import base64
import subprocess
from datetime import timedelta

import pytest

from core import signing


def test_rfc4231_vector():
    # RFC 4231 test case 2: HMAC-SHA256(key="Jefe", "what do ya want for nothing?")
    expected = bytes.fromhex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
    assert signing.sign("Jefe", b"what do ya want for nothing?") == base64.b64encode(expected).decode()


def test_signature_matches_openssl():
    body = signing.body_bytes(signing.envelope("customer.created", "org", {"external_id": "é<&>"}))
    openssl = subprocess.run(["openssl", "dgst", "-sha256", "-hmac", "s3cret", "-binary"], input=body,
                             capture_output=True, check=True).stdout
    assert signing.sign("s3cret", body) == base64.b64encode(openssl).decode()


def test_envelope_and_body_bytes():
    payload = signing.envelope("invoice.created", "org-1", {"lago_id": "7", "total_amount_cents": 1526})
    assert signing.body_bytes(payload) == (
        b'{"webhook_type":"invoice.created","object_type":"invoice","organization_id":"org-1",'
        b'"invoice":{"lago_id":"7","total_amount_cents":1526}}')
    assert signing.envelope("events.errors", "o", {})["object_type"] == "events_errors"
    with pytest.raises(KeyError):
        signing.envelope("nope.nope", "o", {})


def test_headers_and_verification():
    body = b'{"a":1}'
    headers = signing.headers("k", body, "uuid-1")
    assert headers["X-Lago-Signature-Algorithm"] == "hmac"
    assert headers["X-Lago-Unique-Key"] == "uuid-1"
    assert signing.verify("k", body, headers["X-Lago-Signature"])
    assert not signing.verify("k", body + b" ", headers["X-Lago-Signature"])
    assert not signing.verify("other", body, headers["X-Lago-Signature"])
    assert not signing.verify("k", body, None)


@pytest.mark.parametrize("status, ok", [(200, True), (201, True), (202, True), (204, True), (203, False),
                                        (301, False), (400, False), (500, False)])
def test_success_statuses(status, ok):
    assert signing.is_success(status) is ok


def test_backoff_grows_caps_and_jitters_within_bounds():
    delays = signing.schedule()
    assert delays[0] == timedelta(seconds=30)
    assert all(b >= a for a, b in zip(delays, delays[1:]))
    assert max(delays) == timedelta(hours=1)
    for attempt in (1, 5, 20):
        low, high = signing.next_delay(attempt, lambda: 0), signing.next_delay(attempt, lambda: 0.999999)
        middle = signing.next_delay(attempt, lambda: 0.5)
        assert low == middle * 0.8 and middle * 1.2 - high < timedelta(seconds=0.01)


def test_schedule_outlasts_a_long_outage():
    assert sum(signing.schedule(lambda: 0), timedelta()) > timedelta(hours=18)
    assert sum(signing.schedule(), timedelta()) > timedelta(hours=24)
    assert sum(signing.schedule()[:7], timedelta()) > timedelta(hours=1), "an hour down loses nothing"
