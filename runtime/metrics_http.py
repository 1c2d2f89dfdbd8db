"""A role's Prometheus endpoint: bind the HTTP server, know the URL it got, close it on stop.

Each role (coordinator, shard, agent) binds its own port, so a port the OS picks (`metrics_port =
0`, what `symphony up` asks for) cannot be raced by a sibling process; the URL it reports in its
status snapshot is the one it really serves. Nothing here decides whether a role serves metrics:
the role's config entry does (runtime/cluster_config.py, `metrics_port`)."""

from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

WILDCARD_HOSTS = ("", "0.0.0.0", "::")  # every interface: the URL names this host instead


class MetricsEndpoint:
    """A running Prometheus HTTP server (prometheus_client's, on a daemon thread)."""

    def __init__(self, server: WSGIServer, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.port: int = server.server_address[1]
        self.url = metrics_url(host, self.port)

    def close(self) -> None:
        """Stop serving and free the port (the thread ends with `serve_forever`)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_metrics(port: int | None, host: str, registry: CollectorRegistry) -> MetricsEndpoint | None:
    """Serve `registry` on `host:port`: port 0 takes a free port, None or a negative port serves
    nothing (None: the config left it unset and no `symphony up` asked for one)."""
    if port is None or port < 0:
        return None
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsEndpoint(server, thread, host)


def metrics_url(host: str, port: int) -> str:
    """The URL a scraper on this host uses; a wildcard bind is named by this host's name."""
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    elif ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"
