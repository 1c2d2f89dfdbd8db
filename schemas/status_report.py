"""Status snapshots served on the NATS services API (`$SRV.*`, `symphony.<role>.<id>.status`)
and shown by `symphony status`."""

from __future__ import annotations

import msgspec


class ModelStatus(msgspec.Struct, kw_only=True):
    name: str
    pending: int
    target_batch_size: int
    rate_rps: float
    received: int
    dispatched: int
    dropped: int


class ShardStatus(msgspec.Struct, kw_only=True):
    version: int = 1
    shard_id: str
    policy: str
    epoch: int = 0
    models: list[ModelStatus]
    slots_owned: list[str]
    slots_busy: list[str]
    slots_lost: list[str]
    busy_seconds: float = 0.0  # slot time of completed batches, cumulative (as agents measured it)


class SlotStatus(msgspec.Struct, kw_only=True):
    slot_id: str
    models: list[str]
    plans_queued: int
    executions: int
    owner: str = ""
    epoch: int = 0
    busy_fraction: float = 0.0  # over the last 10 s


class AgentStatus(msgspec.Struct, kw_only=True):
    version: int = 1
    agent_id: str
    device: str
    slots: list[SlotStatus]
    compile_count: dict[str, int]


class CoordinatorStatus(msgspec.Struct, kw_only=True):
    coordinator_id: str
    leading: bool
    epoch: int
    shards: list[str]
    agents: list[str]
    desired_slots: int
    surplus_slots: int
    slots: int
