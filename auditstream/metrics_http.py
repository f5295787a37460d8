"""The ``/metrics`` endpoint of every process (serving and the monitor)."""

from __future__ import annotations

from typing import Any

from auditstream.errors import ConfigError


def start_metrics_server(port: int, registry: Any, addr: str = "0.0.0.0") -> Any:
    """Serve ``registry`` on ``addr:port`` from a daemon thread; returns the server
    (``.shutdown()`` stops it). A port that cannot be listened on (taken by another process, or
    privileged) is a :class:`ConfigError` naming the setting, not a traceback from the socket."""
    from prometheus_client import start_http_server

    try:
        server, _ = start_http_server(port, addr=addr, registry=registry)
    except OSError as e:
        raise ConfigError("AUDITSTREAM_METRICS_PORT", port, f"a port this process can listen on at {addr} "
                          f"({e.strerror or e}; another process may hold it: choose another, or 0 for none)") from None
    return server
