"""Outbound webhook HTTP: SSRF checks on the URL and the bounded, deadline-limited exchange."""
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from core import outbound

PUBLIC = "93.184.215.14"


@pytest.mark.parametrize("address, reason", [
    (PUBLIC, None),
    ("2606:4700:4700::1111", None),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.0.1", "private"),
    ("169.254.169.254", "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("169.254.10.10", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "non-public"),       # shared address space (carrier-grade NAT)
    ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"),   # IPv4 wrapped in IPv6
    ("::ffff:10.0.0.1", "private"),
    ("2002:0a00:0001::1", "private"),   # 6to4 of 10.0.0.1
])
def test_forbidden_addresses(address, reason):
    assert outbound.forbidden_reason(address) == reason


def test_loopback_only_when_allowed():
    assert outbound.forbidden_reason("127.0.0.1", allow_loopback=True) is None
    assert outbound.forbidden_reason("10.0.0.1", allow_loopback=True) == "private"


@pytest.fixture
def dns(monkeypatch):
    table = {"hooks.example": [PUBLIC], "inside.example": ["10.0.0.9"], "mixed.example": [PUBLIC, "127.0.0.1"],
             "localhost": ["127.0.0.1"]}

    def resolve(host):
        if host not in table:
            raise socket.gaierror("Name or service not known")
        return table[host]
    monkeypatch.setattr(outbound, "resolve", resolve)
    return table


@pytest.mark.parametrize("url, message", [
    ("http://hooks.example/x", "only https"),
    ("ftp://hooks.example/x", "only https"),
    ("hooks.example/x", "only https"),
    ("https://user:secret@hooks.example/x", "credentials"),
    ("https://inside.example/x", "inside.example resolves to 10.0.0.9, which is a private address"),
    ("https://mixed.example/x", "127.0.0.1, which is a loopback address"),
    ("https://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
    ("https://[::1]:8443/x", "loopback"),
    ("https://nowhere.example/x", "could not be resolved"),
    ("https://hooks.example:99999/x", "port"),
    ("http://localhost:8069/x", "loopback"),
])
def test_refused_urls(dns, url, message):
    with pytest.raises(outbound.UnsafeUrl, match=message):
        outbound.check_url(url)


def test_accepted_urls(dns):
    target = outbound.check_url("https://hooks.example/billing?app=desk")
    assert target == outbound.Target("https", "hooks.example", 443, "/billing?app=desk", (PUBLIC,))
    assert outbound.check_url("http://localhost:8069/x", allow_loopback=True).addresses == ("127.0.0.1",)
    with pytest.raises(outbound.UnsafeUrl, match="only https"):
        outbound.check_url("http://hooks.example/x", allow_loopback=True)  # http stays loopback-only


def test_a_stuck_resolver_cannot_hold_the_check(monkeypatch):
    monkeypatch.setattr(outbound, "resolve", lambda host: time.sleep(5))
    started = time.monotonic()
    with pytest.raises(outbound.UnsafeUrl, match="within"):
        outbound.check_url("https://slow.example/", timeout=0.3)
    assert time.monotonic() - started < 1  # guard against a hang


# ---------------------------------------------------------------- the exchange, against real sockets
@contextmanager
def server(handle):
    """A loopback TCP server running ``handle(connection)`` for each client."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            threading.Thread(target=handle, args=(connection, stop), daemon=True).start()
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    finally:
        stop.set()
        thread.join()
        listener.close()


def read_request(connection):
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int([line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0].split(b":")[1])
    while len(body) < length:
        body += connection.recv(65536)
    return head, body


def test_post_sends_and_reads_a_short_excerpt():
    seen = {}

    def handle(connection, _stop):
        seen["head"], seen["body"] = read_request(connection)
        connection.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 100000\r\n\r\n" + b"internal  details\n" * 5000)
        connection.close()
    with server(handle) as url:
        response = outbound.post(url, b'{"a":1}', {"X-Lago-Signature": "sig"}, allow_loopback=True)
    assert response.status == 500
    assert len(response.excerpt) <= outbound.EXCERPT_CHARS
    assert response.excerpt.startswith("internal details internal details")
    assert seen["body"] == b'{"a":1}'
    assert b"X-Lago-Signature: sig" in seen["head"]
    assert b"Host: 127.0.0.1:" in seen["head"]


def test_an_endless_body_is_read_only_up_to_the_limit():
    sent = []

    def handle(connection, stop):
        read_request(connection)
        connection.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        try:
            while not stop.is_set():
                connection.sendall(b"x" * 65536)
                sent.append(65536)
        except OSError:
            pass
    with server(handle) as url:
        started = time.monotonic()
        response = outbound.post(url, b"{}", {}, timeout=5, allow_loopback=True)
        elapsed = time.monotonic() - started
    assert response.status == 200
    assert elapsed < 2  # guard: it stopped reading at once, long before the deadline


@pytest.mark.parametrize("behaviour", ["silent", "drip"])
def test_one_deadline_for_the_whole_exchange(behaviour):
    def handle(connection, stop):
        read_request(connection)
        if behaviour == "drip":  # a byte every 0.1 s: each read succeeds, the answer never ends
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 1000:
                if stop.wait(0.1):
                    break
                try:
                    connection.send(bytes([byte]))
                except OSError:
                    break
        else:
            stop.wait(10)
        connection.close()
    with server(handle) as url:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="within 1 s"):
            outbound.post(url, b"{}", {}, timeout=1, allow_loopback=True)
        assert time.monotonic() - started < 2  # guard


def test_post_refuses_before_connecting(monkeypatch):
    monkeypatch.setattr(outbound, "resolve", lambda host: ["10.9.8.7"])
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: pytest.fail("connected"))
    with pytest.raises(outbound.UnsafeUrl, match="10.9.8.7"):
        outbound.post("https://rebound.example/x", b"{}", {})
