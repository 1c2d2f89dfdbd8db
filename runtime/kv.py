"""The coordinator's view of JetStream KV: three buckets (state, members with a TTL, the leader's
lease with a TTL), opened by every role; created by the coordinator (by any role on an open
server without users)."""

from __future__ import annotations

import asyncio
import time

import msgspec
import nats
import structlog
from nats.js.errors import BucketNotFoundError, KeyNotFoundError
from nats.js.kv import KeyValue

from runtime.connect import may_create_buckets
from schemas.control import (
    ASSIGNMENT_KEY,
    AUTOSCALE_KEY,
    LEADER_BUCKET,
    MEMBERS_BUCKET,
    STATE_BUCKET,
    AgentHeartbeat,
    Assignment,
    AutoscaleStatus,
    ShardHeartbeat,
    agent_heartbeat_decoder,
    assignment_decoder,
    autoscale_status_decoder,
    shard_heartbeat_decoder,
)

log = structlog.get_logger("coordinator")

# KV entries that did not decode, by kind (`assignment`, `shard`, `agent`, `profile`): each is
# logged and skipped, never raised into a role's loop (issue 7 §4).
undecodable: dict[str, int] = {}


def count_undecodable(kind: str, key: str, error: Exception) -> None:
    undecodable[kind] = undecodable.get(kind, 0) + 1
    log.error("undecodable_entry", kind=kind, key=key, error=str(error)[:200])


class Buckets(msgspec.Struct):
    state: KeyValue
    members: KeyValue
    leader: KeyValue


async def open_bucket(nc: nats.NATS, name: str, ttl_s: float | None, replicas: int = 1, *,
                      wait_s: float = 120.0) -> KeyValue:
    """The bucket, created if missing. With NATS users (runtime/nats_auth.py) only the coordinator
    may create buckets: the other roles wait up to `wait_s` for it to have done so."""
    js = nc.jetstream()
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await js.key_value(name)
        except BucketNotFoundError:
            if not may_create_buckets(nc):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
                continue
        try:
            return await js.create_key_value(bucket=name, history=1, ttl=ttl_s, replicas=replicas)
        except nats.js.errors.BadRequestError:
            return await js.key_value(name)  # another role created it first


async def open_buckets(nc: nats.NATS, *, heartbeat_ttl_s: float, lease_s: float, replicas: int = 1,
                       wait_s: float = 120.0) -> Buckets:
    return Buckets(
        state=await open_bucket(nc, STATE_BUCKET, None, replicas, wait_s=wait_s),
        members=await open_bucket(nc, MEMBERS_BUCKET, heartbeat_ttl_s, replicas, wait_s=wait_s),
        leader=await open_bucket(nc, LEADER_BUCKET, lease_s, replicas, wait_s=wait_s),
    )


async def with_retries(call, *, timeout_s: float = 15.0, delay_s: float = 0.25):  # noqa: ANN001, ANN201
    """Retry a KV call while JetStream is not ready (a clustered bucket elects its leader after
    creation; a server may be restarting)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await call()
        except (nats.js.errors.NoStreamResponseError, nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(delay_s)


async def read_autoscale(state: KeyValue) -> AutoscaleStatus | None:
    """The autoscaler's latest published decision (None: none yet, or unreadable: counted)."""
    try:
        entry = await state.get(AUTOSCALE_KEY)
    except KeyNotFoundError:
        return None
    if entry.value is None:
        return None
    try:
        return autoscale_status_decoder.decode(entry.value)
    except msgspec.DecodeError as error:
        count_undecodable("autoscale", AUTOSCALE_KEY, error)
        return None


async def read_assignment(state: KeyValue) -> tuple[Assignment | None, int]:
    """The assignment and its revision (0 when there is none yet)."""
    try:
        entry = await state.get(ASSIGNMENT_KEY)
    except KeyNotFoundError:
        return None, 0
    if entry.value is None:
        return None, entry.revision or 0
    try:
        return assignment_decoder.decode(entry.value), entry.revision
    except msgspec.DecodeError as error:
        # Treated as no assignment: followers keep the one they have, and the leading
        # coordinator overwrites it at this revision.
        count_undecodable("assignment", ASSIGNMENT_KEY, error)
        return None, entry.revision or 0


def decode_member(key: str, value: bytes | None) -> ShardHeartbeat | AgentHeartbeat | None:
    """A heartbeat from its key (`shard.<id>` or `agent.<id>`) and value; None (logged and
    counted) when it does not decode: a member that cannot be read is not counted as live."""
    if value is None:
        return None
    kind, _, member = key.partition(".")
    try:
        if kind == "shard":
            return shard_heartbeat_decoder.decode(value)
        if kind == "agent":
            return agent_heartbeat_decoder.decode(value)
    except msgspec.DecodeError as error:
        count_undecodable(kind, key, error)
    return None


async def read_member(members: KeyValue, key: str) -> ShardHeartbeat | AgentHeartbeat | None:
    """One member's heartbeat by its key, read directly (None: absent or unreadable)."""
    try:
        entry = await members.get(key)
    except KeyNotFoundError:
        return None
    return decode_member(key, entry.value)


async def list_members(members: KeyValue) -> tuple[dict[str, ShardHeartbeat], dict[str, AgentHeartbeat]]:
    """A snapshot of every member, for displays and test checks only. It is a listing, and a
    listing can miss keys rewritten while it is delivered (coordinator/membership.py): nothing
    that decides may read membership this way."""
    shards: dict[str, ShardHeartbeat] = {}
    agents: dict[str, AgentHeartbeat] = {}
    try:
        keys = await members.keys()
    except nats.js.errors.NoKeysError:
        return shards, agents
    for key in keys:
        beat = await read_member(members, key)
        if isinstance(beat, ShardHeartbeat):
            shards[key.partition(".")[2]] = beat
        elif isinstance(beat, AgentHeartbeat):
            agents[key.partition(".")[2]] = beat
    return shards, agents
