"""Outbound HTTP to an app's webhook endpoint, safe against server-side request forgery.

* ``check_url`` accepts only ``https`` URLs without credentials whose host resolves to public
  addresses only: loopback, private, shared, link-local (cloud metadata among them), multicast,
  reserved and unspecified addresses are refused, also when wrapped in IPv6 (``::ffff:10.0.0.1``).
  ``http`` and loopback are accepted only with ``allow_loopback`` (a system parameter, for tests).
* ``post`` sends one request to an address ``check_url`` returned (no second DNS lookup that could
  be rebound in between), verifies TLS against the host name, enforces ONE deadline on the whole
  exchange (DNS, connect, TLS, request, response headers and body: a receiver that drips bytes or
  never answers is cut off) and reads at most ``max_bytes`` of the response.

Odoo-free: the addon's webhook delivery (``services/webhook_delivery.py``) and the service's URL
check at save time use it.
"""
import http.client
import ipaddress
import socket
import ssl
import threading
import time
from typing import NamedTuple
from urllib.parse import urlsplit

MAX_RESPONSE_BYTES = 4096
EXCERPT_CHARS = 200
# Instance-metadata endpoints (AWS/GCP/Azure/OpenStack, AWS IPv6, ECS tasks, Alibaba): named in
# the refusal; most are link-local or private anyway.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(address) for address in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))


class UnsafeUrl(ValueError):
    """A webhook URL that must not be called; the message says why, for the person who set it."""


class Target(NamedTuple):
    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple


class Response(NamedTuple):
    status: int
    excerpt: str  # at most EXCERPT_CHARS characters of the body, whitespace collapsed


def resolve(host):
    """Every address ``host`` resolves to, in resolver order (tests replace this function)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(info[4][0] for info in infos))


def forbidden_reason(address, allow_loopback=False):
    """Why ``address`` (str or ip_address) must not be called, or None when it is public."""
    ip = ipaddress.ip_address(str(address).split("%", 1)[0])
    embedded = [ip]
    if ip.version == 6:
        embedded += [wrapped for wrapped in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if wrapped]
    for candidate in embedded[::-1]:  # the wrapped IPv4 address decides first
        if candidate in METADATA_ADDRESSES:
            return "cloud metadata"
        if candidate.is_loopback:
            if allow_loopback:
                continue
            return "loopback"
        for reason in ("link_local", "unspecified", "multicast", "reserved", "private"):
            if getattr(candidate, f"is_{reason}"):
                return reason.replace("_", "-")
        if not candidate.is_global:
            return "non-public"
    return None


def check_url(url, allow_loopback=False, timeout=10):
    """The ``Target`` of ``url`` once every check passed; raises ``UnsafeUrl`` otherwise."""
    parts = urlsplit((url or "").strip())
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UnsafeUrl("only https:// URLs are accepted")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("credentials in the URL are not accepted (the signature authenticates Odoo)")
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UnsafeUrl("the port is not valid") from None
    if not host:
        raise UnsafeUrl("the URL has no host")
    try:
        addresses = [str(ipaddress.ip_address(host.split("%", 1)[0]))]
    except ValueError:
        addresses = _resolve_within(host, timeout)
    if not addresses:
        raise UnsafeUrl(f"{host} does not resolve to any address")
    for address in addresses:
        reason = forbidden_reason(address, allow_loopback)
        if reason:
            shown = host if host == address else f"{host} resolves to {address}, which"
            raise UnsafeUrl(f"{shown} is a {reason} address: webhooks go to public addresses only")
    if parts.scheme == "http" and not (allow_loopback and all(
            ipaddress.ip_address(a.split("%", 1)[0]).is_loopback for a in addresses)):
        raise UnsafeUrl("only https:// URLs are accepted (http only to loopback, when tests allow it)")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, tuple(addresses))


def _resolve_within(host, timeout):
    """``resolve(host)`` with a deadline (a stuck resolver cannot hold the caller)."""
    outcome = {}

    def work():
        try:
            outcome["addresses"] = resolve(host)
        except Exception as error:  # noqa: BLE001 (reported below)
            outcome["error"] = error
    thread = threading.Thread(target=work, daemon=True, name="fusion-billing-dns")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise UnsafeUrl(f"{host} could not be resolved within {timeout:g} s")
    if "error" in outcome:
        raise UnsafeUrl(f"{host} could not be resolved ({outcome['error']})")
    return outcome["addresses"]


class _PinnedConnection(http.client.HTTPConnection):
    """Connects to one already-checked address; the Host header and TLS name stay the URL's host."""

    def __init__(self, target, address, timeout):
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = address
        self.tls = ssl.create_default_context() if target.scheme == "https" else None

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        if self.tls:
            self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def post(url, body, headers, timeout=10, allow_loopback=False, max_bytes=MAX_RESPONSE_BYTES):
    """POST ``body`` to ``url`` after ``check_url``; the whole exchange ends within ``timeout`` s.

    Returns a ``Response``; raises ``UnsafeUrl`` (refused), ``TimeoutError`` (deadline) or
    ``OSError``/``http.client.HTTPException`` (the receiver failed)."""
    deadline = time.monotonic() + timeout
    target = check_url(url, allow_loopback=allow_loopback, timeout=timeout)
    connection = _PinnedConnection(target, target.addresses[0], max(deadline - time.monotonic(), 0.001))
    expired = threading.Event()

    def cut_off():  # unblocks whatever the exchange is waiting for (connect, TLS, a dripping read)
        expired.set()
        sock = connection.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    watchdog = threading.Timer(max(deadline - time.monotonic(), 0), cut_off)
    watchdog.daemon = True
    watchdog.start()
    try:
        connection.request("POST", target.path, body=body, headers=dict(headers, Connection="close"))
        response = connection.getresponse()
        data = response.read(max_bytes)
        return Response(response.status, excerpt(data))
    except (OSError, http.client.HTTPException):
        # The socket's own timeout (the time left) and the watchdog end at the same moment: either
        # way it is the deadline, reported as such.
        if expired.is_set() or time.monotonic() >= deadline:
            raise TimeoutError(f"no complete answer within {timeout:g} s") from None
        raise
    finally:
        watchdog.cancel()
        connection.close()


def excerpt(data, limit=EXCERPT_CHARS):
    """A short, single-line excerpt of a response body (never the whole body)."""
    text = " ".join(data[: limit * 4].decode("utf-8", "replace").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
