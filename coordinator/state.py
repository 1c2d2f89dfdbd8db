"""The coordinator's view of JetStream KV: three buckets (state, members with a TTL, the leader's
lease with a TTL), opened or created idempotently by every role."""

from __future__ import annotations

import msgspec
import nats
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from schemas.control import (
    ASSIGNMENT_KEY,
    LEADER_BUCKET,
    MEMBERS_BUCKET,
    STATE_BUCKET,
    AgentHeartbeat,
    Assignment,
    ShardHeartbeat,
)


class Buckets(msgspec.Struct):
    state: KeyValue
    members: KeyValue
    leader: KeyValue


async def open_bucket(nc: nats.NATS, name: str, ttl_s: float | None, replicas: int = 1) -> KeyValue:
    js = nc.jetstream()
    try:
        return await js.key_value(name)
    except BucketNotFoundError:
        try:
            return await js.create_key_value(bucket=name, history=1, ttl=ttl_s, replicas=replicas)
        except nats.js.errors.BadRequestError:
            return await js.key_value(name)  # another role created it first


async def open_buckets(nc: nats.NATS, *, heartbeat_ttl_s: float, lease_s: float, replicas: int = 1) -> Buckets:
    return Buckets(
        state=await open_bucket(nc, STATE_BUCKET, None, replicas),
        members=await open_bucket(nc, MEMBERS_BUCKET, heartbeat_ttl_s, replicas),
        leader=await open_bucket(nc, LEADER_BUCKET, lease_s, replicas),
    )


async def with_retries(call, *, timeout_s: float = 15.0, delay_s: float = 0.25):  # noqa: ANN001, ANN201
    """Retry a KV call while JetStream is not ready (a clustered bucket elects its leader after
    creation; a server may be restarting)."""
    import asyncio
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay_s)


async def keys_with_prefix(kv: KeyValue, prefix: str) -> list[str]:
    """Keys starting with `prefix` (filtered here: nats-py's server-side key filters return
    nothing on this server version)."""
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    return sorted(k for k in keys if k.startswith(prefix))


async def read_assignment(state: KeyValue) -> tuple[Assignment | None, int]:
    """The assignment and its revision (0 when there is none yet)."""
    try:
        entry = await state.get(ASSIGNMENT_KEY)
    except KeyNotFoundError:
        return None, 0
    if entry.value is None:
        return None, entry.revision or 0
    return msgspec.json.decode(entry.value, type=Assignment), entry.revision


async def read_members(members: KeyValue) -> tuple[dict[str, ShardHeartbeat], dict[str, AgentHeartbeat]]:
    shards: dict[str, ShardHeartbeat] = {}
    agents: dict[str, AgentHeartbeat] = {}
    try:
        keys = await members.keys()
    except nats.js.errors.NoKeysError:
        return shards, agents
    for key in keys:
        try:
            entry = await members.get(key)
        except KeyNotFoundError:
            continue  # aged out between listing and reading
        if entry.value is None:
            continue
        kind, _, member = key.partition(".")
        if kind == "shard":
            shards[member] = msgspec.json.decode(entry.value, type=ShardHeartbeat)
        elif kind == "agent":
            agents[member] = msgspec.json.decode(entry.value, type=AgentHeartbeat)
    return shards, agents
