"""The API under Odoo's request replays and hostile input.

Replays: Odoo re-runs a request whose transaction hit a serialization failure
(``odoo.service.model.retrying``); the replay must see exactly the body that was sent, and when
the tries run out the client gets a 503 it can retry. Hostile input: every POST endpoint and the
query parameters, a table of cases; never a 500, every error a Lago envelope, each case answered
within one second (a guard against hangs, not a timing test).
"""
import json
import socket
import threading
import time
from types import SimpleNamespace
from unittest.mock import patch

from psycopg2.errorcodes import SERIALIZATION_FAILURE
from psycopg2.errors import SerializationFailure
from werkzeug.serving import DechunkedInput

from odoo.service import model as service_model
from odoo.tests import tagged
from odoo.tools import mute_logger

from ..core import lago
from .common import FusionBillingApiCase

T0 = 1_795_000_000  # 2026-11-18T11:06:40Z


def serialization_failure():
    error = SerializationFailure("could not serialize access due to concurrent update")
    error.__setstate__({"pgcode": SERIALIZATION_FAILURE})
    return error


class EventsFixture(FusionBillingApiCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        link = cls.env["fusion.billing.account.link"].create({
            "service_id": cls.service.id, "external_id": "cus_1", "partner_id": cls.partner.id})
        cls.subscription = cls._create_subscription(external_id="sub_1", start_date="2026-11-01",
                                                    x_fc_account_link_id=link.id)

    def _event(self, tx, gb=1, **extra):
        return dict({"transaction_id": tx, "external_subscription_id": "sub_1", "code": "bandwidth_gb",
                     "timestamp": T0, "properties": {"gb": gb}}, **extra)

    def no_backoff(self):
        """Odoo's replays without their random back-off (up to 2**try seconds)."""
        return patch.object(service_model, "random", SimpleNamespace(uniform=lambda _low, _high: 0.0))


@tagged("post_install", "-at_install")
class TestApiReplays(EventsFixture):

    @mute_logger("odoo.service.model", "odoo.sql_db")
    def test_a_replayed_request_sees_the_body_that_was_sent(self):
        Event = type(self.env["fusion.billing.event"])
        original, seen = Event._ingest, []

        def conflicting_once(model, service, events):
            seen.append([event["transaction_id"] for event in events])
            if len(seen) == 1:
                raise serialization_failure()
            return original(model, service, events)

        with patch.object(Event, "_ingest", conflicting_once), self.no_backoff():
            response = self.api("POST", "events/batch", {"events": [self._event("r1", 2), self._event("r2", 3)]})
        self.assertEqual(response.status_code, 200, response.text)
        self.assertEqual(seen, [["r1", "r2"], ["r1", "r2"]], "Odoo replayed the request with the same body")
        self.assertEqual(sorted(e["transaction_id"] for e in response.json()["events"]), ["r1", "r2"])
        self.assertEqual(self.env["fusion.billing.event"].search_count([("transaction_id", "in", ["r1", "r2"])]), 2)

    @mute_logger("odoo.service.model", "odoo.sql_db", "odoo.http")
    def test_out_of_retries_is_a_503_the_client_can_retry(self):
        Event = type(self.env["fusion.billing.event"])
        calls = []

        def always_conflicting(_model, _service, events):
            calls.append(len(events))
            raise serialization_failure()

        with patch.object(Event, "_ingest", always_conflicting), self.no_backoff():
            response = self.api("POST", "events", {"event": self._event("busy")})
        self.assertEqual(len(calls), service_model.MAX_TRIES_ON_CONCURRENCY_FAILURE, "Odoo tried every replay")
        self.assertEqual(response.status_code, 503)
        self.assertEqual(response.json()["status"], 503)
        self.assertEqual(response.json()["code"], "conflict_retry_later")
        self.assertGreaterEqual(int(response.headers["Retry-After"]), 1)
        self.assertEqual(response.headers["Content-Type"], "application/json")
        # Events are idempotent by transaction id: the retry is safe and lands once.
        retry = self.api("POST", "events", {"event": self._event("busy")})
        self.assertEqual(retry.status_code, 200)
        self.assertEqual(self.env["fusion.billing.event"].search_count([("transaction_id", "=", "busy")]), 1)


def deep(levels, leaf=1):
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


@tagged("post_install", "-at_install")
class TestApiHostileInput(EventsFixture):
    """Each case: (method, path, body as a JSON-able object or raw bytes, query, expected status)."""

    def cases(self):
        event = self._event
        raw_event = '{"event": {"transaction_id": "h", "external_subscription_id": "sub_1", "code": "bandwidth_gb", ' \
                    '"properties": {"gb": %s}}}'
        raw_batch = '{"events": [{"transaction_id": "h0", "external_subscription_id": "sub_1", "code": "bandwidth_gb", ' \
                    '"properties": {"gb": 1}}, {"transaction_id": "h1", "external_subscription_id": "sub_1", ' \
                    '"code": "bandwidth_gb", "properties": {"gb": %s}}]}'
        subscription = {"external_customer_id": "cus_h", "plan_code": "pro", "external_id": "sub_h"}
        bill = {"external_subscription_id": "sub_1", "period_start": "2026-11-01", "period_end": "2026-12-01"}
        return [
            # numbers: magnitude and digits, bounded before any conversion
            ("POST", "events", (raw_event % "1e10000000").encode(), None, 422),
            ("POST", "events", (raw_event % "1.5e400").encode(), None, 422),
            ("POST", "events", (raw_event % "-1e-400").encode(), None, 422),
            ("POST", "events", (raw_event % ("9" * 5000)).encode(), None, 422),
            ("POST", "events", (raw_event % ("0." + "1" * 400)).encode(), None, 422),
            ("POST", "events/batch", (raw_batch % "1e10000000").encode(), None, 422),
            ("POST", "events", {"event": event("h2", "1e999999999")}, None, 422),
            ("POST", "events", {"event": event("h3", precise_total_amount_cents="1e999999999")}, None, 422),
            ("POST", "events", (raw_event.replace('"properties"', '"precise_total_amount_cents": 1e999999999, '
                                                                  '"properties"') % "1").encode(), None, 422),
            ("POST", "events", {"event": event("h4", timestamp=253402300000)}, None, 422),  # year 9999
            ("POST", "events", {"event": event("h5", timestamp="99999999999.5")}, None, 422),
            ("POST", "events", {"event": event("h6", timestamp=-1)}, None, 422),
            # nesting
            ("POST", "events", {"event": event("h7", properties=deep(450))}, None, 422),
            ("POST", "events", b'{"event": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, 400),
            ("POST", "customers", {"customer": {"external_id": "c_deep", "billing_configuration": deep(450)}}, None, 422),
            # strings: NUL and lone surrogates anywhere (values and keys)
            ("POST", "events", {"event": event("h\u0000")}, None, 422),
            ("POST", "events", {"event": event("h8", properties={"gb": 1, "k\u0000": "v"})}, None, 422),
            ("POST", "events", {"event": event("h9", properties={"gb": 1, "note": "\ud800"})}, None, 422),
            ("POST", "events", b'{"event": {"transaction_id": "h\\ud800", "external_subscription_id": "sub_1", '
                               b'"code": "bandwidth_gb"}}', None, 422),
            ("POST", "events/batch", {"events": [event("b1"), event("b2", properties={"gb": "\u0000"})]}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c1", "name": "Nul\u0000Ltd"}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c\ud800"}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c2", "timezone": "Mars/Olympus_Mons"}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c3", "net_payment_term": 10**30}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c4", "email": "x" * 5000}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c5", "url": "http://["}}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c6", "url": "shop]maple.example"}}, None, 422),
            # a bad key whose value is an object or a list
            ("POST", "events", {"event": event("h10", properties={"gb": 1, "a\u0000b": {"x": 1}})}, None, 422),
            ("POST", "events", {"event": event("h11", properties={"gb": 1, "\ud800": [1]})}, None, 422),
            ("POST", "customers", {"customer": {"external_id": "c7", "billing_configuration": {"k\u0000": {}}}},
             None, 422),
            # dates
            ("POST", "subscriptions", {"subscription": dict(subscription, subscription_at="9999-12-31T00:00:00Z")},
             None, 422),
            ("POST", "subscriptions", {"subscription": dict(subscription, ending_at="9999-12-31T23:59:59Z")}, None, 422),
            ("POST", "subscriptions", {"subscription": dict(subscription, subscription_at="0001-01-01T00:00:00Z")},
             None, 422),
            ("POST", "subscriptions", {"subscription": dict(subscription, name="\u0000")}, None, 422),
            # app-reported bills (dual run)
            ("POST", "reconciliation/app_bills", {"app_bills": [dict(bill, base_fee_cents=10**400)]}, None, 422),
            ("POST", "reconciliation/app_bills", {"app_bills": [dict(bill, usage={"bandwidth_gb": 10**20})]}, None, 422),
            ("POST", "reconciliation/app_bills", {"app_bills": [dict(bill, period_start="9999-12-31")]}, None, 422),
            ("POST", "reconciliation/app_bills", {"app_bills": [dict(bill, currency={"a": 1})]}, None, 422),
            ("POST", "reconciliation/app_bills", {"app_bills": [dict(bill, external_customer_id=["x"])]}, None, 422),
            ("POST", "reconciliation/app_bills", {"app_bills": [bill] * 1001}, None, 422),
            ("POST", "invoices/\u00b2/download", None, None, 404),
            ("POST", "invoices/99999999999999999999999/download", None, None, 404),
            # query parameters and path ids
            ("GET", "customers", None, {"page": "\u00b2"}, 422),
            ("GET", "customers", None, {"page": str(10**22)}, 422),
            ("GET", "customers", None, {"per_page": "\u00b2"}, 422),
            ("GET", "events", None, {"page": "0"}, 422),
            ("GET", "customers/cus_1/past_usage", None, {"external_subscription_id": "sub_1", "periods_count": "\u00b2"},
             422),
            ("GET", "customers/cus_1/past_usage", None, {"external_subscription_id": "sub_1",
                                                         "periods_count": str(10**22)}, 422),
            ("GET", "invoices/\u00b2", None, None, 404),
            ("GET", "invoices/" + "9" * 30, None, None, 404),
            ("GET", "customers", None, {"search_term": "a\u0000b"}, 422),
            ("GET", "customers/a\u0000b", None, None, 422),
            ("GET", "events", None, {"timestamp_from": "9999-12-31T00:00:00Z"}, 422),
            ("GET", "events", None, {"timestamp_from": "yesterday"}, 422),
            ("GET", "invoices", None, {"issuing_date_from": "99999-01-01"}, 422),
            ("GET", "subscriptions", None, {"status": "sleeping"}, 422),
        ]

    @mute_logger("odoo.http", "odoo.sql_db", "odoo.addons.fusion_centralize_billing.controllers.api")
    def test_hostile_input_is_a_lago_error_never_a_500_and_never_slow(self):
        problems = []
        for method, path, body, params, expected in self.cases():
            data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
            headers = dict(self.auth, **{"Content-Type": "application/json"})
            started = time.monotonic()
            response = self.url_open(f"{self.API}/{path}", data=data, params=params, headers=headers,
                                     method=method, timeout=60)
            seconds = time.monotonic() - started
            label = f"{method} {path} {params or ''} {(data or b'')[:80]!r}"
            try:
                envelope = response.json()
            except ValueError:
                envelope = None
            if response.status_code != expected or not isinstance(envelope, dict) \
                    or envelope.get("status") != response.status_code or not isinstance(envelope.get("error"), str):
                problems.append(f"{label}: {response.status_code} {response.text[:200]}")
            elif seconds > 1.0:
                problems.append(f"{label}: answered in {seconds:.1f} s")
        self.assertFalse(problems, "\n".join(problems))
        self.assertFalse(self.env["fusion.billing.event"].search([("transaction_id", "=like", "h%")]),
                         "nothing half-written")

    @mute_logger("odoo.http", "odoo.sql_db", "odoo.addons.fusion_centralize_billing.controllers.api")
    def test_a_malformed_bearer_key_is_a_401(self):
        prefix = self.plaintext.split("_")[1]
        for token in (f"fcb_{prefix[:7]}\x00_x", f"fcb_{prefix}_x\x00y", f"fcb_{prefix[:7]}\u00e9_x", "fcb_1234567\x00_x"):
            response = self.url_open(f"{self.API}/customers", headers={"Authorization": f"Bearer {token}"})
            self.assertEqual((response.status_code, response.json()), (401, {"status": 401, "error": "Unauthorized"}),
                             repr(token))
        self.assertEqual(self.url_open(f"{self.API}/customers", headers=self.auth).status_code, 200)

    @mute_logger("odoo.http", "odoo.addons.fusion_centralize_billing.controllers.api")
    def test_a_chunked_body_is_read_no_further_than_the_limit(self):
        """Transfer-Encoding: chunked, no Content-Length: the server stops reading past 1 MiB and
        answers 413 (it used to buffer the whole body, up to Odoo's 128 MiB or beyond, first)."""
        decoded = []
        original = DechunkedInput.readinto

        def counting(stream, buffer):
            count = original(stream, buffer)
            decoded.append(count)
            return count

        chunk, chunks = b" " * 65536, 64  # 4 MiB of JSON whitespace
        host, port = self.base_url().removeprefix("http://").split(":")
        head = (f"POST {self.API}/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {self.plaintext}\r\n"
                "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()

        def send(connection):
            try:
                connection.sendall(head + b"1\r\n{\r\n")
                for _ in range(chunks):
                    connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                connection.sendall(b"1\r\n}\r\n0\r\n\r\n")
            except OSError:
                pass  # the server answered and stopped reading: what it should do

        answer = b""
        with patch.object(DechunkedInput, "readinto", counting), self.outside_client(), \
                socket.create_connection((host, int(port)), timeout=30) as connection:
            sender = threading.Thread(target=send, args=(connection,))
            sender.start()
            try:
                while data := connection.recv(65536):
                    answer += data
            except OSError:
                pass
            sender.join(30)
        status_line, _, rest = answer.partition(b"\r\n")
        self.assertIn(b" 413 ", status_line, answer[:300])
        self.assertEqual(json.loads(rest.partition(b"\r\n\r\n")[2])["code"], "payload_too_large")
        self.assertLessEqual(sum(decoded), lago.MAX_BODY_BYTES + len(chunk),
                             "the server read no further than the limit (and one chunk of the stream)")

    def test_the_bounds_are_in_the_openapi_document(self):
        document = self.url_open(f"{self.API}/openapi.json").json()
        limits = document["info"]["x-limits"]
        self.assertEqual(limits["number"]["maximum_magnitude"], "1e15")
        self.assertIn("max_depth", limits["json"])
        event = document["components"]["schemas"]["EventInput"]["properties"]
        self.assertIn("maximum", event["timestamp"]["oneOf"][0])
        self.assertIn("503", document["paths"]["/events/batch"]["post"]["responses"])

    def test_the_limits_still_accept_ordinary_payloads(self):
        body = {"events": [self._event("ok1", 0.30000000000000004), self._event("ok2", "12.5"),
                           self._event("ok3", 999_999_999_999_999, properties={"gb": 1, "nested": deep(10, "é✓")}),
                           self._event("ok4", -2.5e-7)]}
        response = self.api("POST", "events/batch", body)
        self.assertEqual(response.status_code, 200, response.text)
        customer = self.api("POST", "customers", {"customer": {"external_id": "tz", "timezone": "America/Toronto"}})
        self.assertEqual((customer.status_code, customer.json()["customer"]["timezone"]), (200, "America/Toronto"))
        self.assertEqual(self.api("GET", "customers", params={"page": "3", "per_page": "5000"}).status_code, 200)
