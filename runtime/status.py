"""`symphony status`: find every shard and agent through the NATS services API and show their
status snapshots as tables (or JSON), with each role's metrics URL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import nats
import structlog

from runtime.connect import connect_client
from runtime.nats_auth import Creds
from schemas.codec import Decoder
from schemas.control import AutoscaleStatus
from schemas.limits import InvalidName, validate_identifier
from schemas.status_report import (
    AgentStatus,
    CoordinatorStatus,
    ShardStatus,
    agent_status_decoder,
    coordinator_status_decoder,
    shard_status_decoder,
)

log = structlog.get_logger("ops")


async def discover(nc: nats.NATS, service: str, wait_s: float = 0.5) -> list[dict]:
    """Every instance's `$SRV.INFO` reply (all instances answer one request)."""
    inbox = nc.new_inbox()
    replies: list[dict] = []

    async def collect(msg) -> None:  # noqa: ANN001
        try:
            info = json.loads(msg.data)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
            log.warning("undecodable_service_info", service=service, size=len(msg.data))
            return
        if isinstance(info, dict) and isinstance(info.get("metadata"), dict):
            replies.append(info)

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.INFO.{service}", b"", reply=inbox)
    await asyncio.sleep(wait_s)
    await sub.unsubscribe()
    return replies


async def gather_status(url: str, prefix: str = "symphony", creds: Creds | str | Path | None = None,
                        ) -> tuple[list[ShardStatus], list[AgentStatus], list[CoordinatorStatus]]:
    nc = await connect_client(url, "symphony-status", creds, user="operator")
    try:
        coordinators = await _statuses(nc, prefix, "coordinator", coordinator_status_decoder)
        shards = await _statuses(nc, prefix, "shard", shard_status_decoder)
        agents = await _statuses(nc, prefix, "agent", agent_status_decoder)
        return (sorted(shards, key=lambda s: s.shard_id), sorted(agents, key=lambda a: a.agent_id),
                sorted(coordinators, key=lambda c: (not c.leading, c.coordinator_id)))
    finally:
        await nc.close()


async def received_by_shard(url: str, model: str, shards: list[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Requests of `model` each shard has received, once every one of `shards` has answered (a
    busy shard can miss discovery's short window, and a missing count is not a zero)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        statuses, _agents, _coordinators = await gather_status(url)
        counts = {s.shard_id: sum(m.received for m in s.models if m.name == model) for s in statuses}
        if set(shards) <= set(counts):
            return counts
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"shards {sorted(set(shards) - set(counts))} did not report their status")


async def _statuses(nc: nats.NATS, prefix: str, role: str, decoder: Decoder) -> list:
    """Each instance's status snapshot; an instance with an invalid id or an unreadable reply is
    left out with a warning rather than failing the whole table."""
    statuses = []
    for info in await discover(nc, f"symphony-{role}"):
        member = info["metadata"].get(f"{role}_id")
        try:
            subject = f"{prefix}.{role}.{validate_identifier(member, f'{role} id')}.status"
            statuses.append(decoder.decode((await nc.request(subject, b"", timeout=2)).data))
        except (InvalidName, msgspec.DecodeError) as error:
            log.warning("status_unreadable", role=role, member=str(member)[:128], error=str(error)[:200])
    return statuses


def format_status(shards: list[ShardStatus], agents: list[AgentStatus],
                  coordinators: list[CoordinatorStatus] | None = None) -> str:
    lines = [f"{len(shards)} shard(s), {len(agents)} agent(s), {len(coordinators or [])} coordinator(s)"]
    leader = next((c for c in coordinators or [] if c.leading), None)
    if leader is not None:
        lines.append(f"coordinator {leader.coordinator_id} leads: epoch {leader.epoch}, {leader.slots} slots, "
                     f"desired {leader.desired_slots}, surplus {leader.surplus_slots} (the autoscaling signal)")
        if leader.autoscale is not None:
            lines.append(autoscale_line(leader.autoscale))
    elif coordinators:
        lines.append("no coordinator leads right now (a lease is ageing out)")
    states = slot_states(leader.autoscale if leader is not None else None)
    lines += ["",
             f"{'shard':<14}{'policy':<15}{'epoch':>6}{'slots':>7}{'busy':>6}{'lost':>6}  models"]
    for s in shards:
        lines.append(f"{s.shard_id:<14}{s.policy:<15}{s.epoch:>6}{len(s.slots_owned):>7}{len(s.slots_busy):>6}"
                     f"{len(s.slots_lost):>6}  {', '.join(m.name for m in s.models)}")
    lines += ["", f"{'model':<16}{'shard':<14}{'rate/s':>9}{'pending':>9}{'target':>8}{'received':>10}"
                  f"{'dispatched':>12}{'dropped':>9}"]
    for s in shards:
        for m in s.models:
            lines.append(f"{m.name:<16}{s.shard_id:<14}{m.rate_rps:>9.1f}{m.pending:>9}{m.target_batch_size:>8}"
                         f"{m.received:>10}{m.dispatched:>12}{m.dropped:>9}")
    lines += ["", f"{'slot':<14}{'state':<10}{'agent':<14}{'class':<16}{'owner':<12}{'busy':>6}{'queued':>8}"
                  f"{'executions':>12}  models"]
    running = set()
    for a in agents:
        for slot in a.slots:
            running.add(slot.slot_id)
            lines.append(f"{slot.slot_id:<14}{states.get(slot.slot_id, 'active'):<10}{a.agent_id:<14}"
                         f"{_cell(a.device or '-', 16)}{(slot.owner or '-'):<12}{slot.busy_fraction:>6.0%}"
                         f"{slot.plans_queued:>8}{slot.executions:>12}  {', '.join(slot.models)}")
    for slot_id in sorted(set(states) - running):  # not running: no agent answers for it
        lines.append(f"{slot_id:<14}{states[slot_id]:<10}{'-':<14}{'-':<16}{'-':<12}")
    return "\n".join([*lines, "", *metrics_lines(metrics_endpoints(shards, agents, coordinators or []))])


def _cell(text: str, width: int) -> str:
    """`text` in a column of `width`, cut short with room for a space (a device kind such as
    "NVIDIA H100 80GB HBM3" is longer than most columns)."""
    return (text if len(text) < width else text[:width - 2] + "…").ljust(width)


def metrics_endpoints(shards: list[ShardStatus], agents: list[AgentStatus],
                      coordinators: list[CoordinatorStatus]) -> list[tuple[str, str, str]]:
    """(role, id, metrics URL) of every role in the snapshots; the URL is "" where it serves none."""
    return ([("coordinator", c.coordinator_id, c.metrics_url) for c in coordinators]
            + [("shard", s.shard_id, s.metrics_url) for s in shards]
            + [("agent", a.agent_id, a.metrics_url) for a in agents])


def metrics_lines(endpoints: list[tuple[str, str, str]]) -> list[str]:
    """The "metrics:" block `symphony up`, `symphony demo` and `symphony status` print."""
    lines = ["metrics (Prometheus text; `curl URL`):"]
    for role, role_id, url in endpoints:
        lines.append(f"  {role:<12} {role_id:<16} {url or '- (serves none: docs/metrics.md)'}")
    return lines if endpoints else ["metrics: no role answered"]


def slot_states(status: AutoscaleStatus | None) -> dict[str, str]:
    """slot -> active, starting, draining, released or idle, from the autoscaler's decision
    (empty without one: then every running slot is active)."""
    if status is None:
        return {}
    phases = ("active", "starting", "draining", "released", "idle")
    return {slot: phase for phase in phases for slot in getattr(status, phase)}


def autoscale_line(status: AutoscaleStatus) -> str:
    return (f"autoscaler ({status.rule}): target {status.target_slots} slots, need {status.need_slots:.2f} "
            f"({status.reason}); demand {status.demand_slots:.2f}, busy {status.busy_slots:.2f}, bad "
            f"{status.bad_rate:.1%}; active {len(status.active)}, starting {len(status.starting)}, draining "
            f"{len(status.draining)}, released {len(status.released)}, idle {len(status.idle)}")
