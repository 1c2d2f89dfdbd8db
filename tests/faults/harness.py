"""One fault-injection run: a coordinated cluster of real processes on loopback, open-loop load at
a fraction of its capacity with a ledger of every reply per request id, one seeded fault, and a
report (outcomes, goodput over time, detection and recovery, unanswered requests and where they
were, device time on expired work, whether the KV names only live members afterwards)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import numpy as np

from load.bound import best_batch
from load.sender import SendResult, send_schedule
from runtime.cluster import LocalCluster
from runtime.connect import connect_options, resolve_creds, server_list
from runtime.kv import list_members, open_buckets, read_assignment
from runtime.nats_auth import connect_fields
from runtime.nats_server import free_port
from schemas.profile import profile_from_sleep_spec
from shard.core.config import CoreConfig
from shard.core.latency import LatencyModel
from tests.factories import cluster_toml
from tests.faults.proxy import LinkProxy

MODELS = {"alpha": ("sleep:4000,4000", 150.0), "beta": ("sleep:6000,6000", 250.0)}
SLOTS = 4
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'
BIN_S = 0.5


def capacity_rps() -> float:
    """The analytic bound for an even mix of the models on SLOTS slots (load/bound.py)."""
    config = CoreConfig()
    costs = []
    for spec, slo_ms in MODELS.values():
        latency = LatencyModel(profile_from_sleep_spec(spec))
        b = best_batch(latency, int(slo_ms * 1e6), config)
        costs.append(latency.exec_ns[b] / b / 1e9)
    return SLOTS / float(np.mean(costs))


class FaultReport(msgspec.Struct, kw_only=True):
    fault: str
    load: float  # fraction of capacity
    rate_rps: float
    fault_at_s: float
    heal_at_s: float
    sent: int
    outcomes: dict[str, int]  # status code -> count; "0" is no reply
    duplicates: int  # requests with more than one reply
    unanswered: int
    unanswered_window_s: tuple[float, float] | None  # earliest/latest send time of unanswered ones
    unanswered_where: str  # which process held them, as far as the run can tell
    detect_s: float | None  # fault -> the coordinator's first new epoch
    recover_s: float | None  # fault -> goodput back and staying back
    goodput_bins: list[float]  # ok-within-SLO fraction per BIN_S of send time
    expired_device_s: float  # device time spent on requests that finished past their deadline
    expired_not_run: int  # requests agents dropped on dequeue as expired (never run)
    withheld_plans: int  # plans agents reached after their shard could declare them lost
    kv_members_live: bool
    kv_detail: str
    second_replies: list[tuple[int, str, str]] = []  # (request, status, reason) of replies past the first
    passed: bool = False
    problems: list[str] = msgspec.field(default_factory=list)


@dataclass
class Run:
    cluster: LocalCluster
    proxy: LinkProxy | None
    t0: float = 0.0  # monotonic time the load started
    notes: dict[str, str] = field(default_factory=dict)
    epochs: list[tuple[float, int]] = field(default_factory=list)  # (s since t0, epoch)

    def pid(self, name: str) -> int:
        return self.cluster.processes[name].pid

    nc: nats.NATS | None = None  # the harness's own connection (operator), reconnecting forever

    async def assignment(self):
        buckets = await open_buckets(self.nc, heartbeat_ttl_s=1.5, lease_s=1.5)
        assignment, _ = await read_assignment(buckets.state)
        return assignment

    async def leader(self) -> str:
        assignment = await self.assignment()
        return f"coordinator-{assignment.coordinator.rsplit('-', 1)[1]}"

    async def owner_of(self, model: str) -> str:
        assignment = await self.assignment()
        return f"shard-{assignment.models[model]}"


@dataclass(frozen=True)
class Fault:
    """`inject` at fault_at_s, `heal` (if any) at heal_at_s; `may_lose` names the processes whose
    death or pause may leave requests unanswered (their clients see a timeout)."""

    name: str
    inject: Callable[[Run], Awaitable[None]]
    heal: Callable[[Run], Awaitable[None]] | None = None
    may_lose: bool = False
    proxied: str | None = None  # a process that connects through the link proxy
    burst: float = 1.0  # rate multiple between fault and heal


async def _quiet(error: Exception) -> None:
    """The harness's connection sees the faults it injects; they are not its errors."""


def _config_text() -> str:
    return cluster_toml({name: (kind, slo_ms, 64) for name, (kind, slo_ms) in MODELS.items()},
                        {"agent-a": ["a0", "a1"], "agent-b": ["b0", "b1"]}, coordinators=2,
                        shards={"shard-0": 1000, "shard-1": None},
                        metrics_ports={"agent-a": free_port(), "agent-b": free_port()})


def schedule(rate: float, seconds: float, seed: int, burst: tuple[float, float, float] | None):
    """Poisson arrivals over an even model mix; `burst` = (from_s, to_s, multiple)."""
    rng = np.random.default_rng(seed)
    times = []
    t = 0.0
    while t < seconds:
        r = rate * (burst[2] if burst and burst[0] <= t < burst[1] else 1.0)
        t += rng.exponential(1.0 / r)
        times.append(t)
    times = np.asarray(times[:-1])
    names = list(MODELS)
    models = [names[k] for k in rng.integers(0, len(names), len(times))]
    return times, models


async def run_fault(fault: Fault, *, load: float, seconds: float, fault_at_s: float, heal_at_s: float,
                    tmp: Path, seed: int = 1) -> FaultReport:
    config_path = tmp / "cluster.toml"
    config_path.write_text(_config_text())
    cluster = LocalCluster(config_path, log_dir=tmp / "logs")
    proxy = None
    if fault.proxied is not None:
        from runtime.nats_server import NatsServer

        cluster.server = NatsServer(auth=cluster.auth).start()
        cluster.url = cluster.server.url
        proxy = LinkProxy(cluster.server.port).start()
        cluster.role_urls[fault.proxied] = proxy.url
    run = Run(cluster, proxy)
    try:
        await cluster.start(timeout_s=90)
        run.nc = await nats.connect(server_list(cluster.url), name="fault-harness", max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.2, error_cb=_quiet,
                                    **connect_options(resolve_creds(cluster.url, None, "operator"), cluster.url))
        return await _measure(run, fault, load, seconds, fault_at_s, heal_at_s, seed)
    finally:
        if run.nc is not None:
            await run.nc.close()
        stalled = run.notes.pop("stalled_socket", None)
        if stalled is not None:
            stalled.close()
        cluster.stop()
        if proxy is not None:
            proxy.stop()


async def _measure(run: Run, fault: Fault, load: float, seconds: float, fault_at_s: float, heal_at_s: float,
                   seed: int) -> FaultReport:
    rate = load * capacity_rps()
    burst = (fault_at_s, heal_at_s, fault.burst) if fault.burst != 1.0 else None
    times, models = schedule(rate, seconds, seed, burst)
    slo = [MODELS[m][1] for m in models]
    watcher = asyncio.create_task(_watch_epochs(run))
    run.t0 = time.monotonic()
    load_task = asyncio.create_task(send_schedule(
        run.cluster.url, times, [f"symphony.infer.{m}" for m in models], [BODY] * len(times), slo_ms=slo,
        drain_s=4.0, precise=False, ledger=True))
    await asyncio.sleep(fault_at_s)
    await fault.inject(run)
    if fault.heal is not None:
        await asyncio.sleep(max(0.0, heal_at_s - (time.monotonic() - run.t0)))
        await fault.heal(run)
    result: SendResult = await load_task
    watcher.cancel()
    kv_live, kv_detail = await _kv_names_only_live(run)
    agent_stats = _scrape_agents(run)
    return _report(fault, load, rate, fault_at_s, heal_at_s, result, times, np.asarray(slo), run, kv_live,
                   kv_detail, agent_stats)


async def _watch_epochs(run: Run) -> None:
    """Polls the assignment (a watcher would be torn down by a server fault) for epoch changes."""
    last = None
    while True:
        try:
            assignment = await asyncio.wait_for(run.assignment(), 2.0)
            if assignment is not None and assignment.epoch != last:
                last = assignment.epoch
                run.epochs.append((time.monotonic() - run.t0, assignment.epoch))
        except Exception:  # noqa: BLE001 - the server may be the thing that is down
            pass
        await asyncio.sleep(0.2)


async def _kv_names_only_live(run: Run, timeout_s: float = 8.0) -> tuple[bool, str]:
    """After the run, once the TTLs have had their time: members and assignment name only
    processes that are alive."""
    cluster = run.cluster
    live_shards = {n.removeprefix("shard-") for n, p in cluster.processes.items()
                   if n.startswith("shard-") and p.poll() is None}
    live_agents = {n.removeprefix("agent-") for n, p in cluster.processes.items()
                   if n.startswith("agent-") and p.poll() is None}
    deadline = time.monotonic() + timeout_s
    detail = ""
    while time.monotonic() < deadline:
        try:
            buckets = await open_buckets(run.nc, heartbeat_ttl_s=1.5, lease_s=1.5)
            shards, agents = await list_members(buckets.members)
            assignment, _ = await read_assignment(buckets.state)
            owners = set(assignment.models.values()) | set(assignment.slots.values()) if assignment else set()
            detail = (f"members shards={sorted(shards)} agents={sorted(agents)}; assignment owners={sorted(owners)}; "
                      f"live shards={sorted(live_shards)} agents={sorted(live_agents)}")
            if set(shards) <= live_shards and set(agents) <= live_agents and owners <= live_shards and shards:
                return True, detail
        except Exception as error:  # noqa: BLE001
            detail = f"KV unreadable: {error!r}"
        await asyncio.sleep(0.5)
    return False, detail


def _scrape_agents(run: Run) -> dict[str, float]:
    """Sum a few counters over the agents still alive (a killed one's are gone with it)."""
    import urllib.request

    totals = {"symphony_agent_late_compute_seconds_total": 0.0, "symphony_agent_expired_items_total": 0.0,
              "symphony_agent_withheld_plans_total": 0.0}
    for agent in run.cluster.config.agents:
        process = run.cluster.processes.get(f"agent-{agent.id}")
        if process is None or process.poll() is not None:
            continue
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{agent.metrics_port}/metrics", timeout=3).read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in totals:
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


def _report(fault: Fault, load: float, rate: float, fault_at_s: float, heal_at_s: float, result: SendResult,
            times: np.ndarray, slo_ms: np.ndarray, run: Run, kv_live: bool, kv_detail: str,
            agent_stats: dict[str, float]) -> FaultReport:
    status = result.status
    codes, counts = np.unique(status, return_counts=True)
    good = (status == 200) & (result.latency_s * 1000 <= slo_ms)
    edges = np.arange(0, times[-1] + BIN_S, BIN_S)
    which = np.digitize(times, edges) - 1
    bins = [float(good[which == k].mean()) if np.any(which == k) else 1.0 for k in range(len(edges) - 1)]
    before = [b for k, b in enumerate(bins) if (k + 1) * BIN_S <= fault_at_s and k * BIN_S >= 1.0]
    baseline = float(np.mean(before)) if before else 1.0
    recover_s = None
    first_after = int(fault_at_s / BIN_S)
    for k in range(first_after, len(bins)):
        if all(b >= 0.9 * baseline for b in bins[k:]):
            recover_s = max(0.0, k * BIN_S - fault_at_s)
            break
    detect_s = next((t - fault_at_s for t, _ in run.epochs if t > fault_at_s), None)
    unanswered = np.flatnonzero(status == 0)
    window = (float(times[unanswered].min()), float(times[unanswered].max())) if unanswered.size else None
    report = FaultReport(
        fault=fault.name, load=load, rate_rps=round(rate, 1), fault_at_s=fault_at_s, heal_at_s=heal_at_s,
        sent=len(times), outcomes={str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
        duplicates=int(np.count_nonzero(result.replies > 1)), unanswered=int(unanswered.size),
        unanswered_window_s=window, unanswered_where=run.notes.get("victim", ""),
        detect_s=None if detect_s is None else round(detect_s, 2),
        recover_s=None if recover_s is None else round(recover_s, 2), goodput_bins=[round(b, 3) for b in bins],
        expired_device_s=round(agent_stats["symphony_agent_late_compute_seconds_total"], 3),
        expired_not_run=int(agent_stats["symphony_agent_expired_items_total"]),
        withheld_plans=int(agent_stats["symphony_agent_withheld_plans_total"]),
        kv_members_live=kv_live, kv_detail=kv_detail, second_replies=result.second_replies[:20],
    )
    judge(report, fault)
    return report


def judge(report: FaultReport, fault: Fault) -> None:
    """The pass rule: never two replies; unanswered only when a process holding requests died or
    stopped, only for requests sent around the fault (bound: from one SLO before it until
    recovery), none after recovery; the KV names only live members afterwards."""
    problems = report.problems
    if report.duplicates:
        problems.append(f"{report.duplicates} requests got more than one reply; second replies: "
                        f"{report.second_replies[:5]}")
    if report.unanswered:
        if not fault.may_lose:
            problems.append(f"{report.unanswered} unanswered, but this fault kills or stops no process")
        else:
            lo, hi = report.unanswered_window_s
            end = report.heal_at_s if fault.heal is not None else report.fault_at_s
            limit = end + (report.recover_s if report.recover_s is not None else 0.0) + 2.0
            if lo < report.fault_at_s - max(s for _, s in MODELS.values()) / 1000 - 1.0 or hi > limit:
                problems.append(f"unanswered requests sent at {lo:.2f}-{hi:.2f} s, outside the fault window "
                                f"({report.fault_at_s} s to {limit:.1f} s)")
    if not report.kv_members_live:
        problems.append(f"KV names a dead member afterwards: {report.kv_detail}")
    report.passed = not problems


# ---- the faults ------------------------------------------------------------------------
def _signal(name_of: Callable[[Run], Awaitable[str]], sig: int) -> Callable[[Run], Awaitable[None]]:
    async def act(run: Run) -> None:
        name = run.notes.get("victim") or await name_of(run)
        run.notes["victim"] = name
        if sig == signal.SIGKILL:
            run.cluster.kill_process(name)
        elif name == "nats-server":
            os.kill(run.cluster.server.process.pid, sig)
        else:
            os.kill(run.pid(name), sig)
    return act


async def _restart(run: Run) -> None:
    """What a supervisor (systemd, Kubernetes) does after a crash: start the process again."""
    name = run.notes["victim"]
    role, _, ident = name.partition("-")  # agent-<id>, shard-<id>, coordinator-<k> (its id is its name)
    run.cluster._spawn(name, role, "--id", name if role == "coordinator" else ident)


async def _agent_b(run: Run) -> str:
    return "agent-agent-b"


async def _alpha_owner(run: Run) -> str:
    return await run.owner_of("alpha")


async def _leader(run: Run) -> str:
    return await run.leader()


async def _nats(run: Run) -> str:
    return "nats-server"


async def _kill_nats(run: Run) -> None:
    run.notes["victim"] = "nats-server"
    run.cluster.server.kill()


async def _restart_nats(run: Run) -> None:
    await asyncio.get_running_loop().run_in_executor(None, run.cluster.server.start)


async def _restart_nats_empty(run: Run) -> None:
    """A replacement server with an empty store: the KV is soft state and must be rebuilt."""
    import shutil

    shutil.rmtree(Path(run.cluster.server.store.name) / "jetstream", ignore_errors=True)
    await _restart_nats(run)


async def _lame_duck(run: Run) -> None:
    run.notes["victim"] = "nats-server"
    os.kill(run.cluster.server.process.pid, signal.SIGUSR2)


async def _restart_after_lame_duck(run: Run) -> None:
    server = run.cluster.server
    server.kill()  # lame duck ends in an exit; a supervisor starts it again
    await _restart_nats(run)


def _link(setting: str, value: object) -> Callable[[Run], Awaitable[None]]:
    async def act(run: Run) -> None:
        run.notes["victim"] = "agent-b link"
        setattr(run.proxy, setting, value)
    return act


async def _reset_link(run: Run) -> None:
    run.notes["victim"] = "agent-b link"
    run.proxy.reset()


async def _stalled_client(run: Run) -> None:
    """A client that sends requests and never reads its inbox: replies pile up for it alone."""
    run.notes["victim"] = "stalled client"
    host, port = server_list(run.cluster.url)[0].removeprefix("nats://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = b""
    while b"\r\n" not in head:
        head += sock.recv(4096)
    info = msgspec.json.decode(head.split(b"\r\n", 1)[0].split(b" ", 1)[1])  # INFO {...}: the nonce
    creds = resolve_creds(run.cluster.url, None, "client")
    connect = {"verbose": False, "pedantic": False, "headers": True, "name": "stalled"}
    inbox = f"{creds.inbox_prefix if creds else '_INBOX'}.stalled"
    if creds is not None:  # an NKey login signs the server's nonce
        connect |= connect_fields(creds.seed, info["nonce"])
    frames = [b"CONNECT " + msgspec.json.encode(connect) + b"\r\n", b"SUB %s.* 1\r\n" % inbox.encode()]
    for i in range(3000):
        frames.append(b"PUB symphony.infer.alpha %s.%d %d\r\n%s\r\n" % (inbox.encode(), i, len(BODY), BODY))
    sock.sendall(b"".join(frames))
    run.notes["stalled_socket"] = sock  # kept open, never read, closed with the run


async def _nothing(run: Run) -> None:
    run.notes["victim"] = "burst"


FAULTS = {
    f.name: f for f in [
        Fault("agent-kill", _signal(_agent_b, signal.SIGKILL), _restart, may_lose=True),
        Fault("agent-stop", _signal(_agent_b, signal.SIGSTOP), _signal(_agent_b, signal.SIGCONT), may_lose=True),
        Fault("shard-kill", _signal(_alpha_owner, signal.SIGKILL), _restart, may_lose=True),
        Fault("shard-stop", _signal(_alpha_owner, signal.SIGSTOP), _signal(_alpha_owner, signal.SIGCONT),
              may_lose=True),
        Fault("coordinator-kill", _signal(_leader, signal.SIGKILL), _restart),
        Fault("coordinator-stop", _signal(_leader, signal.SIGSTOP), _signal(_leader, signal.SIGCONT)),
        Fault("nats-kill", _kill_nats, _restart_nats, may_lose=True),
        Fault("nats-kill-empty-store", _kill_nats, _restart_nats_empty, may_lose=True),
        Fault("nats-stop", _signal(_nats, signal.SIGSTOP), _signal(_nats, signal.SIGCONT), may_lose=True),
        Fault("nats-lame-duck", _lame_duck, _restart_after_lame_duck, may_lose=True),
        Fault("link-latency", _link("delay_s", 0.05), _link("delay_s", 0.0), proxied="agent-agent-b"),
        Fault("link-blackhole", _link("blackhole", True), _link("blackhole", False), proxied="agent-agent-b"),
        Fault("link-reset", _reset_link, proxied="agent-agent-b"),
        Fault("stalled-client", _stalled_client),
        Fault("burst-10x", _nothing, _nothing, burst=10.0),
    ]
}
