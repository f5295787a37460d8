"""A loopback TCP proxy in front of the embedded broker that can cut chosen Kafka clients off.

``auditstream bench faults`` puts it between every client and Tansu (the broker advertises the
proxy's port, so clients reach the broker through it after the bootstrap too). Each connection
is tagged with the client id of its first request: every Kafka request header carries
``client_id`` (a non-compact nullable string after api key, version and correlation id, in every
header version), and serving clients name their process and role
(``<group>-<host>-<pid>.consumer`` / ``.producer``).

:meth:`FaultProxy.cut` holds every matching connection: nothing is forwarded either way and the
sockets stay open, as in a network partition (clients time their requests out, reconnect, and
their new connections are held too). :meth:`FaultProxy.heal` lets the held bytes through; a
client that gave up on a connection meanwhile has closed it, which the proxy passes on.
"""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass
from typing import Callable

HEADER_FIXED = 8  # api_key int16, api_version int16, correlation_id int32; then client_id
MAX_FIRST_FRAME = 1 << 20  # a first request is a small ApiVersions/Metadata: anything bigger is no Kafka


def client_id_of(frame: bytes) -> str:
    """The client id in a Kafka request (the frame without its 4-byte size); "" if it has none."""
    if len(frame) < HEADER_FIXED + 2:
        return ""
    (length,) = struct.unpack_from(">h", frame, HEADER_FIXED)
    if length < 0:
        return ""
    return frame[HEADER_FIXED + 2:HEADER_FIXED + 2 + length].decode("utf-8", "replace")


def _read_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed before a whole request arrived")
        data += chunk
    return data


@dataclass(eq=False)
class Connection:
    client: socket.socket
    upstream: socket.socket | None = None
    client_id: str = ""
    open: bool = True


class FaultProxy:
    """Forward ``127.0.0.1:listen_port`` to ``127.0.0.1:upstream_port``; cut and heal clients."""

    def __init__(self, listen_port: int, upstream_port: int) -> None:
        self.listen_port, self.upstream_port = listen_port, upstream_port
        self._server = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
        self._lock = threading.Condition()
        self._cut: Callable[[str], bool] | None = None
        self._connections: list[Connection] = []
        self._closed = False
        self.held_connections = 0  # connections that met a cut (for the report)
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="fault-proxy")
        self._acceptor.start()

    # -- control ---------------------------------------------------------------------------

    def cut(self, matches: Callable[[str], bool]) -> None:
        """Hold every connection (open or future) whose client id ``matches``."""
        with self._lock:
            self._cut = matches
            self.held_connections += sum(1 for c in self._connections if c.open and c.client_id and matches(c.client_id))

    def heal(self) -> None:
        with self._lock:
            self._cut = None
            self._lock.notify_all()

    def client_ids(self) -> list[str]:
        with self._lock:
            return sorted({c.client_id for c in self._connections if c.open})

    def close(self) -> None:
        with self._lock:
            self._closed, self._cut = True, None
            self._lock.notify_all()
            connections = list(self._connections)
        self._server.close()
        for c in connections:
            self._shut(c)

    # -- forwarding ------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            conn = Connection(client)
            with self._lock:
                if self._closed:
                    client.close()
                    return
                self._connections = [c for c in self._connections if c.open] + [conn]
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name="fault-proxy-conn").start()

    def _serve(self, conn: Connection) -> None:
        try:
            size_bytes = _read_exact(conn.client, 4)
            (size,) = struct.unpack(">i", size_bytes)
            if not 0 < size <= MAX_FIRST_FRAME:
                raise ConnectionError(f"first frame of {size} bytes: not a Kafka request")
            frame = _read_exact(conn.client, size)
            conn.client_id = client_id_of(frame)
            with self._lock:
                if self._cut is not None and self._cut(conn.client_id):
                    self.held_connections += 1
            self._wait_open(conn)
            conn.upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            conn.upstream.settimeout(None)
            conn.upstream.sendall(size_bytes + frame)
        except OSError:
            self._shut(conn)
            return
        threading.Thread(target=self._pump, args=(conn, conn.upstream, conn.client), daemon=True,
                         name="fault-proxy-down").start()
        self._pump(conn, conn.client, conn.upstream)

    def _wait_open(self, conn: Connection) -> None:
        """Block while a cut holds this connection (the bytes already read wait with it)."""
        with self._lock:
            while not self._closed and conn.open and self._cut is not None and self._cut(conn.client_id):
                self._lock.wait(0.5)

    def _pump(self, conn: Connection, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self._wait_open(conn)
                dst.sendall(data)
        except OSError:
            pass
        self._shut(conn)

    def _shut(self, conn: Connection) -> None:
        conn.open = False
        for sock in (conn.client, conn.upstream):
            if sock is None:
                continue
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
