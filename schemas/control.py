"""Control-plane messages: the assignment the coordinator writes, heartbeats shards and agents
put into the membership bucket, and slot claims. JSON in the KV (readable with `nats kv get`)."""

from __future__ import annotations

import msgspec

from schemas.model import ModelSpec

STATE_BUCKET = "symphony"  # assignment, drain requests
MEMBERS_BUCKET = "symphony-members"  # heartbeats; entries age out after the TTL
LEADER_BUCKET = "symphony-leader"  # the leader's lease; ages out after the lease TTL
ASSIGNMENT_KEY = "assignment"


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    epoch: int = 0
    models: dict[str, str] = {}  # model -> shard
    slots: dict[str, str] = {}  # slot -> shard
    demand: dict[str, float] = {}  # shard -> predicted busy slots
    desired_slots: int = 0
    surplus_slots: int = 0
    coordinator: str = ""


class ModelLoad(msgspec.Struct, frozen=True, kw_only=True):
    rate_rps: float
    pending: int


class ShardHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    shard_id: str
    models: dict[str, ModelLoad] = {}
    epoch: int = 0  # the assignment it has applied
    draining: bool = False


class AgentSlot(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: str
    models: list[str]
    owner: str = ""
    epoch: int = 0


class AgentHeartbeat(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    agent_id: str
    device: str
    slots: list[AgentSlot]
    memory_bytes: dict[str, int] = {}  # device -> bytes in use, where JAX exposes it


class SlotClaim(msgspec.Struct, frozen=True, kw_only=True):
    slot_id: str
    shard_id: str
    epoch: int


class ClaimReply(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    reason: str = ""
    queued_plans: int = 0


def encode(value: msgspec.Struct) -> bytes:
    return msgspec.json.encode(value)
