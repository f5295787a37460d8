"""stack/fault_proxy.py on real sockets: it reads each connection's Kafka client id from the
first request header, forwards bytes both ways, holds the connections a cut matches (nothing
through, nothing closed) and lets the held bytes through when the cut heals. The bench's
scenarios (tests/stack/test_faults_bench.py) use it in front of the real broker."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from stack.broker import free_port
from stack.fault_proxy import FaultProxy, client_id_of


def kafka_request(client_id: str | None, body: bytes = b"") -> bytes:
    """A framed request header (ApiVersions v3: api key 18) with ``client_id`` and ``body``."""
    cid = struct.pack(">h", -1) if client_id is None else struct.pack(">h", len(client_id.encode())) + client_id.encode()
    frame = struct.pack(">hhi", 18, 3, 7) + cid + body
    return struct.pack(">i", len(frame)) + frame


def test_client_id_is_read_from_any_request_header() -> None:
    assert client_id_of(kafka_request("serve-host-42.producer")[4:]) == "serve-host-42.producer"
    assert client_id_of(kafka_request(None)[4:]) == ""
    assert client_id_of(b"\x00\x12") == ""  # too short to hold one


@pytest.fixture()
def echo_upstream():
    """A TCP server that sends back whatever it receives (stands in for the broker)."""
    server = socket.create_server(("127.0.0.1", free_port()))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: [c.sendall(d) for d in iter(lambda: c.recv(4096), b"")],
                             daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _received(sock: socket.socket, n: int, timeout_s: float) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    try:
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


def test_cut_holds_matching_clients_and_heal_releases_them(echo_upstream: int) -> None:
    proxy = FaultProxy(free_port(), echo_upstream)
    try:
        out = socket.create_connection(("127.0.0.1", proxy.listen_port))
        other = socket.create_connection(("127.0.0.1", proxy.listen_port))
        first_out, first_other = kafka_request("g-h-1.producer"), kafka_request("g-h-1.consumer")
        out.sendall(first_out)
        other.sendall(first_other)
        assert _received(out, len(first_out), 5) == first_out
        assert _received(other, len(first_other), 5) == first_other
        assert proxy.client_ids() == ["g-h-1.consumer", "g-h-1.producer"]

        proxy.cut(lambda client_id: client_id.endswith(".producer"))
        out.sendall(b"held")
        other.sendall(b"passes")
        assert _received(other, 6, 5) == b"passes"  # the consumer side still talks
        assert _received(out, 4, 1.0) == b""  # the producer's bytes wait in the proxy
        late = socket.create_connection(("127.0.0.1", proxy.listen_port))  # a reconnect is held too
        late_request = kafka_request("g-h-1.producer", b"retry")
        late.sendall(late_request)
        assert _received(late, len(late_request), 1.0) == b""

        proxy.heal()
        assert _received(out, 4, 5) == b"held"
        assert _received(late, len(late_request), 5) == late_request
    finally:
        proxy.close()


def test_a_first_frame_that_is_no_kafka_request_is_closed(echo_upstream: int) -> None:
    proxy = FaultProxy(free_port(), echo_upstream)
    try:
        sock = socket.create_connection(("127.0.0.1", proxy.listen_port))
        sock.sendall(b"GET / HTTP/1.1\r\n\r\n")  # 'GET ' read as a size of 1.2 GB
        assert _received(sock, 1, 5) == b""
    finally:
        proxy.close()
