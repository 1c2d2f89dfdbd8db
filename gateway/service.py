"""`symphony gateway`: one process serving the HTTP/REST and gRPC front doors over one NATS
connection (a client user's credentials), until SIGINT/SIGTERM.

Ports may be 0 (the system picks); the bound addresses are logged and, with `address_file`,
written there as JSON (`{"http": "http://127.0.0.1:PORT", "grpc": "grpc://...", "metrics": ...}`)
so whoever started the gateway (`symphony up`) can print them without racing for a free port.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
from dataclasses import dataclass
from importlib import metadata as distributions
from pathlib import Path

import grpc
import structlog
import uvicorn
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from gateway.forward import Forwarder
from gateway.metrics import GatewayMetrics
from gateway.rest import HttpDoor
from gateway.rpc import GRPC_MESSAGE_BYTES_MAX, GrpcDoor
from runtime.connect import connect_service
from runtime.metrics_http import MetricsEndpoint, serve_metrics

log = structlog.get_logger("gateway")

# The gateway allocates a few dozen short-lived objects per call (arrays, dicts, futures); with the
# default gen-0 threshold (700) the cyclic collector ran often enough to cost about a fifth of the
# CPU per call under load (measured with it off). A larger threshold, with the start-up objects
# frozen out of every collection, keeps cycles collected at a fraction of the cost.
GC_GEN0_THRESHOLD = 50_000


@dataclass(frozen=True)
class GatewaySettings:
    nats_url: str
    prefix: str = "symphony"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 0  # 0: a free port; -1: no metrics endpoint
    linger_us: int = 0  # how long the coalescing sender waits for more requests (0: one loop turn)
    creds: str | None = None  # a client user's credentials file; default $SYMPHONY_NATS_CREDS
    address_file: str | None = None


def _version() -> str:
    try:
        return distributions.version("symphony-serve")
    except distributions.PackageNotFoundError:
        return "0"


class Gateway:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.addresses: dict[str, str] = {}
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task | None = None
        self._http_socket: socket.socket | None = None
        self._grpc: grpc.aio.Server | None = None
        self._metrics: MetricsEndpoint | None = None
        self.forwarder: Forwarder | None = None

    async def start(self) -> dict[str, str]:
        s = self.settings
        metrics = GatewayMetrics()
        nc = await connect_service(s.nats_url, f"gateway-{os.getpid()}", s.creds)
        self.forwarder = Forwarder(nc, s.prefix, metrics=metrics, linger_us=s.linger_us)
        await self.forwarder.start()
        version = _version()
        self.addresses["http"] = await self._start_http(HttpDoor(self.forwarder, version))
        self.addresses["grpc"] = await self._start_grpc(GrpcDoor(self.forwarder, version))
        self._metrics = serve_metrics(s.metrics_port, s.host, metrics.registry)
        if self._metrics is not None:
            self.addresses["metrics"] = self._metrics.url
        if s.address_file:
            tmp = Path(f"{s.address_file}.tmp")
            tmp.write_text(json.dumps(self.addresses))
            tmp.replace(s.address_file)
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
        log.info("gateway_started", **self.addresses)
        return self.addresses

    async def _start_http(self, door: HttpDoor) -> str:
        s = self.settings
        # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says
        # TCP, and a socket made with proto 0 passes that on to every accepted connection, which
        # then waits out the client's delayed ACK (~40 ms) between a response's header and body.
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM,
                             socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((s.host, s.http_port))
        self._http_socket = sock
        config = uvicorn.Config(door.app(), http="httptools", loop="none", lifespan="off", log_config=None,
                                access_log=False, server_header=False, date_header=False, timeout_keep_alive=30,
                                backlog=4096)
        self._http = uvicorn.Server(config)
        self._http.install_signal_handlers = lambda: None  # the role's runner owns the signals
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # raises what stopped it
            await asyncio.sleep(0.01)
        return f"http://{s.host}:{sock.getsockname()[1]}"

    async def _start_grpc(self, door: GrpcDoor) -> str:
        s = self.settings
        self._grpc = grpc.aio.server(options=[("grpc.max_receive_message_length", GRPC_MESSAGE_BYTES_MAX),
                                              ("grpc.max_send_message_length", GRPC_MESSAGE_BYTES_MAX)])
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(door, self._grpc)
        port = self._grpc.add_insecure_port(f"{s.host}:{s.grpc_port}")
        await self._grpc.start()
        return f"grpc://{s.host}:{port}"

    async def stop(self) -> None:
        """Stop taking calls, let those in flight finish (a few seconds at most), then close."""
        if self._grpc is not None:
            await self._grpc.stop(grace=3.0)
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await asyncio.wait([self._http_task], timeout=5.0)
        if self._http_socket is not None:
            self._http_socket.close()  # uvicorn closes the sockets it opened, not those it was given
        if self._metrics is not None:
            self._metrics.close()
        if self.forwarder is not None:
            await self.forwarder.stop()
            await self.forwarder.nc.drain()
        log.info("gateway_stopped")
