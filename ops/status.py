"""`symphony status`: find every shard and agent through the NATS services API and show their
status snapshots as tables (or JSON)."""

from __future__ import annotations

import asyncio
import json

import msgspec
import nats

from ops.connect import connect_client
from schemas.status_report import AgentStatus, CoordinatorStatus, ShardStatus


async def discover(nc: nats.NATS, service: str, wait_s: float = 0.5) -> list[dict]:
    """Every instance's `$SRV.INFO` reply (all instances answer one request)."""
    inbox = nc.new_inbox()
    replies: list[dict] = []

    async def collect(msg) -> None:  # noqa: ANN001
        replies.append(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(f"$SRV.INFO.{service}", b"", reply=inbox)
    await asyncio.sleep(wait_s)
    await sub.unsubscribe()
    return replies


async def gather_status(url: str, prefix: str = "symphony") -> tuple[list[ShardStatus], list[AgentStatus], list[CoordinatorStatus]]:
    nc = await connect_client(url, "symphony-status")
    try:
        shards, agents, coordinators = [], [], []
        for info in await discover(nc, "symphony-coordinator"):
            msg = await nc.request(f"{prefix}.coordinator.{info['metadata']['coordinator_id']}.status", b"", timeout=2)
            coordinators.append(msgspec.json.decode(msg.data, type=CoordinatorStatus))
        for info in await discover(nc, "symphony-shard"):
            msg = await nc.request(f"{prefix}.shard.{info['metadata']['shard_id']}.status", b"", timeout=2)
            shards.append(msgspec.json.decode(msg.data, type=ShardStatus))
        for info in await discover(nc, "symphony-agent"):
            msg = await nc.request(f"{prefix}.agent.{info['metadata']['agent_id']}.status", b"", timeout=2)
            agents.append(msgspec.json.decode(msg.data, type=AgentStatus))
        return (sorted(shards, key=lambda s: s.shard_id), sorted(agents, key=lambda a: a.agent_id),
                sorted(coordinators, key=lambda c: (not c.leading, c.coordinator_id)))
    finally:
        await nc.close()


def format_status(shards: list[ShardStatus], agents: list[AgentStatus],
                  coordinators: list[CoordinatorStatus] | None = None) -> str:
    lines = [f"{len(shards)} shard(s), {len(agents)} agent(s), {len(coordinators or [])} coordinator(s)"]
    leader = next((c for c in coordinators or [] if c.leading), None)
    if leader is not None:
        lines.append(f"coordinator {leader.coordinator_id} leads: epoch {leader.epoch}, {leader.slots} slots, "
                     f"desired {leader.desired_slots}, surplus {leader.surplus_slots} (the autoscaling signal)")
    elif coordinators:
        lines.append("no coordinator leads right now (a lease is ageing out)")
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
    lines += ["", f"{'slot':<14}{'agent':<14}{'owner':<12}{'busy':>6}{'queued':>8}{'executions':>12}  models"]
    for a in agents:
        for slot in a.slots:
            lines.append(f"{slot.slot_id:<14}{a.agent_id:<14}{(slot.owner or '-'):<12}{slot.busy_fraction:>6.0%}"
                         f"{slot.plans_queued:>8}{slot.executions:>12}  {', '.join(slot.models)}")
    return "\n".join(lines)
