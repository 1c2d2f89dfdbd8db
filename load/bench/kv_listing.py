"""Is a KV listing a safe way to read membership? Measured against a real nats-server (issue 11).

Six members heartbeat into a bucket with a TTL (each key rewritten every `--period-s`), and
every `--every-s` the benchmark takes two looks side by side: a listing (`kv.keys()`, what the
old coordinator did every half second), and the coordinator's own view (coordinator/membership.py
fed by one long-lived watch, what it does now). It counts the looks that missed a member.

    python -m load.bench.kv_listing [--seconds 60] [--members 6] [--period-s 0.5] [--ttl-s 3]

Why a listing misses keys: `keys()` is a watch that stops at the first entry delivered with
nothing pending after it; a key rewritten while the listing is delivered is re-sent behind that
point, so the listing returns without it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import nats
from nats.js.kv import KV_DEL, KV_PURGE

from coordinator.membership import MemberView
from runtime.kv import decode_member
from runtime.nats_server import NatsServer
from schemas.control import ShardHeartbeat, encode


async def _heartbeats(kv, names: list[str], period_s: float, stop: asyncio.Event) -> None:  # noqa: ANN001
    async def one(name: str, offset_s: float) -> None:
        await asyncio.sleep(offset_s)
        while not stop.is_set():
            await kv.put(f"shard.{name}", encode(ShardHeartbeat(shard_id=name)))
            await asyncio.sleep(period_s)

    await asyncio.gather(*(one(n, period_s * i / len(names)) for i, n in enumerate(names)))


async def _feed_view(kv, view: MemberView) -> None:  # noqa: ANN001
    """The coordinator's way: one watch, every update into the view."""
    watcher = await kv.watchall()
    async for entry in watcher:
        if entry is None:
            continue
        now = time.monotonic_ns()
        if entry.operation in (KV_DEL, KV_PURGE):
            view.left(entry.key, now)
        elif (beat := decode_member(entry.key, entry.value)) is not None:
            view.observe(entry.key, beat, entry.revision, now)


async def measure(seconds: float, members: int, period_s: float, ttl_s: float, every_s: float) -> dict:
    server = NatsServer().start()
    try:
        nc = await nats.connect(server.url)
        kv = await nc.jetstream().create_key_value(bucket="kv-listing", history=1, ttl=ttl_s)
        names = [f"m{i}" for i in range(members)]
        stop = asyncio.Event()
        beats = asyncio.create_task(_heartbeats(kv, names, period_s, stop))
        view = MemberView(int(ttl_s * 1e9), time.monotonic_ns())
        watch = asyncio.create_task(_feed_view(kv, view))
        await asyncio.sleep(2 * period_s)
        looks = listing_short = listing_failed = view_short = 0
        sizes: dict[int, int] = {}
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                listed = await kv.keys()
            except nats.js.errors.NoKeysError:
                listed = []
            except nats.errors.Error:  # e.g. "maximum consumers limit reached": each listing is a consumer
                listing_failed += 1
                listed = []
            looks += 1
            sizes[len(listed)] = sizes.get(len(listed), 0) + 1
            listing_short += len(listed) < members
            view_short += len(view.shards()) < members
            await asyncio.sleep(every_s)
        stop.set()
        watch.cancel()
        await beats
        await nc.close()
    finally:
        server.stop()
    return {"seconds": seconds, "members": members, "period_s": period_s, "ttl_s": ttl_s, "looks": looks,
            "listing_short": listing_short, "listing_failed": listing_failed,
            "listing_sizes": dict(sorted(sizes.items())), "view_short": view_short}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--members", type=int, default=6)
    parser.add_argument("--period-s", type=float, default=0.5)
    parser.add_argument("--ttl-s", type=float, default=3.0)
    parser.add_argument("--every-s", type=float, default=0.1)
    args = parser.parse_args()
    result = asyncio.run(measure(args.seconds, args.members, args.period_s, args.ttl_s, args.every_s))
    print(json.dumps(result))
    print(f"listings that missed a member: {result['listing_short']} of {result['looks']} "
          f"({result['listing_failed']} of them failed; sizes {result['listing_sizes']}); "
          f"the watched view missed one {result['view_short']} times")


if __name__ == "__main__":
    main()
