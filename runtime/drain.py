"""Draining a shard: ask the coordinator to move its models and slots elsewhere, and wait until
the assignment no longer names it and it holds nothing (its queued requests were handed back)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from runtime.connect import connect_client
from runtime.kv import open_buckets, read_assignment, read_member
from runtime.nats_auth import Creds
from schemas.limits import validate_identifier


async def drain_shard(url: str, shard_id: str, *, timeout_s: float = 60.0, forget: bool = False,
                      undo: bool = False, creds: Creds | str | Path | None = None) -> float:
    """Seconds it took. With `forget`, the drain mark is removed afterwards (the shard is going
    away); `undo` only removes the mark so the shard takes models again."""
    validate_identifier(shard_id, "shard id")  # it becomes a KV key: `drain.<shard>`
    nc = await connect_client(url, "symphony-drain", creds, user="operator")
    try:
        buckets = await open_buckets(nc, heartbeat_ttl_s=3.0, lease_s=3.0, wait_s=10.0)  # the coordinator makes them
        if undo:
            await buckets.state.delete(f"drain.{shard_id}")
            return 0.0
        await buckets.state.put(f"drain.{shard_id}", b"1")
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            assignment, _rev = await read_assignment(buckets.state)
            beat = await read_member(buckets.members, f"shard.{shard_id}")
            named = assignment is not None and (shard_id in assignment.models.values()
                                                or shard_id in assignment.slots.values())
            behind = assignment is not None and beat is not None and beat.epoch < assignment.epoch
            holding = beat is not None and (bool(beat.models) or behind)
            if not named and not holding:
                if forget:
                    await buckets.state.delete(f"drain.{shard_id}")
                return time.monotonic() - started
            await asyncio.sleep(0.25)
        raise TimeoutError(f"shard {shard_id} still holds models after {timeout_s:.0f} s")
    finally:
        await nc.close()
