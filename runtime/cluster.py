"""A local cluster: the embedded nats-server (unless a URL is given), every agent and shard of a
cluster config as child processes, supervised; `stop()` ends all it started.

The embedded server has NATS users by default (runtime/nats_auth.py): NKeys drawn for this cluster,
credentials and seed files (0600) in `run_dir`, each role process told its file through
$SYMPHONY_NATS_CREDS, and the operator's and clients' files recorded for CLI commands.

Every role serves its Prometheus metrics by default (SYMPHONY_METRICS=free: a role whose config
leaves `metrics_port` unset binds a free port itself and reports its URL in its status snapshot;
`metrics_endpoints()` reads them back)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import nats
import structlog

from runtime.actuator import actuate
from runtime.client import LOCAL_URL_FILE
from runtime.cluster_config import AUTOSCALE_ENV, METRICS_ENV, ClusterConfig, load_cluster_config
from runtime.connect import connect_client
from runtime.nats_auth import CREDS_ENV, Auth, TlsFiles, deployment_for, forget_local, record_local
from runtime.nats_server import NatsCluster, NatsServer
from schemas.control import AutoscaleStatus, freshest

log = structlog.get_logger("ops")

GATEWAY_USER = "gateway"  # the client user the gateway of `symphony up` connects as


class LocalCluster:
    def __init__(self, config_path: str | Path, nats_url: str | None = None, *, log_dir: Path | None = None,
                 nats_cluster: int = 0, auth: bool = True, clients: Sequence[str] = ("client",),
                 tls: TlsFiles | None = None, run_dir: Path | None = None, autoscale: bool = False,
                 gateway: bool = False, metrics: bool = True) -> None:
        """`auth`: users and permissions on the server(s) this starts (not on a given `nats_url`,
        whose credentials come from $SYMPHONY_NATS_CREDS); `clients`: the client users; `tls`:
        the servers' certificate; `run_dir`: where the credentials and server configs go (a new
        private temporary folder by default, removed by `stop()`); `autoscale`: the coordinators run
        the autoscaler, and `run_actuator()` starts and stops agents as it decides; `gateway`: one
        OIP gateway process (as NATS user `gateway`, a client), its addresses in `gateway_addresses`;
        `metrics`: the roles whose `metrics_port` is unset serve metrics on a free port (off: none)."""
        self.config_path = str(config_path)
        self.config: ClusterConfig = load_cluster_config(config_path)
        self.server: NatsServer | None = None
        self.auth: Auth | None = None
        self._own_run_dir = False
        if auth and not nats_url:
            self._own_run_dir = run_dir is None
            run = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="symphony-run-"))
            users = (*clients, GATEWAY_USER) if gateway and GATEWAY_USER not in clients else tuple(clients)
            self.auth = Auth.create(deployment_for(self.config, users, tls), run)
        self.nats_cluster: NatsCluster | None = (NatsCluster(nats_cluster, auth=self.auth)
                                                 if nats_cluster > 1 else None)
        self.url = nats_url or ""
        self.processes: dict[str, subprocess.Popen] = {}
        self.log_dir = log_dir
        self._spawned = 0
        self.role_urls: dict[str, str] = {}  # process name -> its own NATS URL (fault injection: a proxy)
        if autoscale and self.config.coordinator is None:
            raise ValueError(f"{config_path}: autoscaling needs a coordinator: add a [coordinator] section")
        self.autoscale = autoscale
        self.metrics = metrics
        self.decisions: list[tuple[float, AutoscaleStatus]] = []  # (monotonic s, decision) as the actuator saw them
        self.gateway = gateway
        self.gateway_addresses: dict[str, str] = {}  # "http", "grpc", "metrics" -> URL, once started
        self._gateway_dir: Path | None = None

    def _spawn(self, name: str, *args: str) -> None:
        out = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.autoscale:
            env[AUTOSCALE_ENV] = "1"
        env.pop(METRICS_ENV, None)
        if self.metrics:
            env[METRICS_ENV] = "free"
        if self.auth is not None:
            env[CREDS_ENV] = str(self.auth.creds_path(self._user_of(args)))
        url = self.url
        if self.nats_cluster is not None:  # spread the roles over the servers; each fails over to the rest
            url = self.nats_cluster.url_preferring(self._spawned % len(self.nats_cluster.servers))
            env["SYMPHONY_KV_REPLICAS"] = str(len(self.nats_cluster.servers))
        url = self.role_urls.get(name, url)
        self._spawned += 1
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *args, "--config", self.config_path, "--nats-url", url],
            stdout=out, stderr=subprocess.STDOUT if out is not subprocess.DEVNULL else subprocess.DEVNULL, env=env,
        )
        if out is not subprocess.DEVNULL:
            out.close()  # the child has its own copy

    def _user_of(self, args: Sequence[str]) -> str:
        role = args[0]
        if role == "agent":
            return self.auth.agent_user(args[list(args).index("--id") + 1])
        return role

    def creds_path(self, user: str) -> Path | None:
        """The credentials file of a NATS user (`operator`, `client`, ...); None without auth."""
        return self.auth.creds_path(user) if self.auth is not None else None

    async def start(self, timeout_s: float = 300.0) -> str:
        if self.nats_cluster is not None:
            self.nats_cluster.start()
            self.url = self.nats_cluster.url
        elif not self.url:
            self.server = NatsServer(auth=self.auth).start()
            self.url = self.server.url
        if self.config.coordinator is not None:
            for k in range(self.config.coordinator.count):
                self._spawn(f"coordinator-{k}", "coordinator", "--id", f"coordinator-{k}")
        for agent in self.config.agents:
            self._spawn(f"agent-{agent.id}", "agent", "--id", agent.id)
        for shard in self.config.shards:
            self.add_shard(shard.id)
        await self.wait_ready(timeout_s)
        if self.gateway:
            await self._start_gateway()
        Path(LOCAL_URL_FILE).parent.mkdir(parents=True, exist_ok=True)
        Path(LOCAL_URL_FILE).write_text(self.url + "\n")
        record_local(self.url, self.auth)
        return self.url

    async def _start_gateway(self, timeout_s: float = 60.0) -> None:
        """One gateway on free ports; it writes the addresses it bound to a file we wait for."""
        if self.auth is not None:
            address_file = self.auth.run_dir / "gateway.json"
        else:
            self._gateway_dir = Path(tempfile.mkdtemp(prefix="symphony-gateway-"))
            address_file = self._gateway_dir / "gateway.json"
        address_file.unlink(missing_ok=True)
        self._spawn("gateway", "gateway", "--http-port", "0", "--grpc-port", "0", "--address-file", str(address_file),
                    "--metrics-port", "0" if self.metrics else "-1")
        deadline = time.monotonic() + timeout_s
        while not address_file.exists():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        self.gateway_addresses = json.loads(address_file.read_text())

    async def metrics_endpoints(self, timeout_s: float = 10.0) -> list[tuple[str, str, str]]:
        """(role, id, metrics URL) of every role, from their status snapshots: each role binds its
        own port and says which it got, so no port is picked here for another process to take
        first. Waits until every process started has answered, at most `timeout_s`. The gateway,
        which serves no status, comes last, from the addresses it wrote."""
        from runtime.status import gather_status, metrics_endpoints

        deadline = time.monotonic() + timeout_s
        gateway = [("gateway", "gateway", self.gateway_addresses.get("metrics", ""))] if self.gateway_addresses else []
        while True:
            shards, agents, coordinators = await gather_status(self.url, self.config.subject_prefix,
                                                               self.creds_path("operator"))
            endpoints = metrics_endpoints(shards, agents, coordinators)
            if len(endpoints) + len(gateway) >= len(self.processes) or time.monotonic() > deadline:
                return endpoints + gateway

    def add_shard(self, shard_id: str) -> None:
        self._spawn(f"shard-{shard_id}", "shard", "--id", shard_id)

    def shard_ids(self) -> list[str]:
        return sorted(name.removeprefix("shard-") for name in self.processes if name.startswith("shard-"))

    async def scale_shards(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Add shard processes, or drain and stop the newest ones, until `count` run."""
        from runtime.drain import drain_shard

        current = self.shard_ids()
        next_index = max((int(i.rsplit("-", 1)[1]) for i in current if i.rsplit("-", 1)[-1].isdigit()), default=-1) + 1
        while len(current) < count:
            shard_id = f"shard-{next_index}"
            next_index += 1
            self.add_shard(shard_id)
            current.append(shard_id)
        for shard_id in sorted(current, key=lambda i: (len(i), i))[count:]:
            await drain_shard(self.url, shard_id, timeout_s=timeout_s, forget=True,
                              creds=self.creds_path("operator"))
            self.stop_process(f"shard-{shard_id}")
        return self.shard_ids()

    async def run_actuator(self, poll_s: float = 0.25, cold_start_s: float | None = None) -> None:
        """Act on the autoscaler's decisions until cancelled (runtime/actuator.py decides): start
        the agents of `starting` slots after the cold start, stop those whose slots are all
        `released`. `cold_start_s`: default the config's `[coordinator.autoscale] cold_start_s`."""
        from runtime.kv import open_buckets, read_autoscale

        settings = self.config.coordinator
        cold_s = settings.autoscale.cold_start_s if cold_start_s is None else cold_start_s
        agents = {agent.id: [slot.id for slot in agent.slots] for agent in self.config.agents}
        nc = await connect_client(self.url, "symphony-actuator", self.creds_path("operator"), user="operator")
        asked: dict[str, float] = {}
        status: AutoscaleStatus | None = None  # the newest decision read: the only one acted on
        try:
            buckets = await open_buckets(nc, heartbeat_ttl_s=settings.heartbeat_ttl_s, lease_s=settings.lease_s)
            while True:
                try:
                    status = freshest(await read_autoscale(buckets.state), status)
                except nats.errors.Error as error:
                    log.warning("autoscale_read_failed", error=repr(error))
                now_s = time.monotonic()
                if status is not None and (not self.decisions or self.decisions[-1][1] != status):
                    self.decisions.append((now_s, status))
                running = {a for a in agents if self.processes.get(f"agent-{a}") is not None}
                plan = actuate(status, agents, running, asked, now_s, cold_s)
                asked = plan.asked_s
                for agent in plan.start:
                    log.info("actuator_start", agent=agent)
                    self._spawn(f"agent-{agent}", "agent", "--id", agent)
                for agent in plan.stop:
                    log.info("actuator_stop", agent=agent)
                    process = self.processes.pop(f"agent-{agent}")
                    process.send_signal(signal.SIGTERM)  # the agent leaves the members bucket at once
                    await asyncio.to_thread(_wait_or_kill, process)
                await asyncio.sleep(poll_s)
        finally:
            await nc.close()

    def stop_process(self, name: str) -> None:
        process = self.processes.pop(name)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            _wait_or_kill(process)

    def kill_process(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Fault injection: end a role abruptly (no drain, no goodbye)."""
        self.processes[name].send_signal(sig)
        if sig == signal.SIGKILL:
            self.processes.pop(name).wait()

    async def wait_ready(self, timeout_s: float) -> None:
        """Ready when every model answers its metadata request (its shard is serving) and, with a
        coordinator, every model's shard has applied the assignment and holds a slot."""
        nc = await connect_client(self.url, "symphony-cluster", self.creds_path("operator"), user="operator")
        deadline = time.monotonic() + timeout_s
        try:
            if self.config.dynamic:
                await self._wait_assigned(nc, deadline)
            for model in self.config.models:
                while True:
                    self.check_alive()
                    try:
                        await nc.request(f"{self.config.subject_prefix}.meta.{model.name}", b"", timeout=1.0)
                        break
                    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"model {model.name} is not served after {timeout_s:.0f} s") from None
                        await asyncio.sleep(0.3)
        finally:
            await nc.close()

    async def _wait_assigned(self, nc: nats.NATS, deadline: float) -> None:
        from runtime.kv import open_buckets, read_assignment, read_member

        settings = self.config.coordinator
        buckets = None
        while True:
            self.check_alive()
            try:
                buckets = buckets or await open_buckets(nc, heartbeat_ttl_s=settings.heartbeat_ttl_s,
                                                        lease_s=settings.lease_s, replicas=1, wait_s=0.5)
                assignment, _rev = await read_assignment(buckets.state)
                shards = {} if assignment is None else {
                    s: await read_member(buckets.members, f"shard.{s}")
                    for s in {s for m in assignment.models for s in assignment.shards_of(m)}}
            except nats.errors.Error:
                assignment, shards = None, {}
            if assignment is not None:
                holders = set(assignment.slots.values())
                ready = all(assignment.models.get(m.name) in holders for m in self.config.models) and all(
                    beat is not None and beat.epoch >= assignment.epoch for beat in shards.values())
                if ready:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError("the coordinator has not given every model a shard with slots")
            await asyncio.sleep(0.3)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with code {process.returncode}")

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.nats_cluster is not None:
            self.nats_cluster.stop()
        try:
            if Path(LOCAL_URL_FILE).read_text().strip() == self.url:
                Path(LOCAL_URL_FILE).unlink()
        except OSError:
            pass
        forget_local(self.url)
        if self._gateway_dir is not None:
            shutil.rmtree(self._gateway_dir, ignore_errors=True)
        if self.auth is not None:  # the keys were for this cluster only
            if self._own_run_dir:
                shutil.rmtree(self.auth.run_dir, ignore_errors=True)
            else:
                shutil.rmtree(self.auth.creds_dir, ignore_errors=True)
                for conf in self.auth.run_dir.glob("nats-server-*.conf"):
                    conf.unlink(missing_ok=True)


def _wait_or_kill(process: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """Wait for a process told to stop; kill it after `timeout_s`."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
