"""How long clustered JetStream KV is unavailable after a server dies (issue 11 §3).

A three-server NATS cluster on loopback with the project's three buckets at three replicas.
A member writes its heartbeat and a follower reads the assignment every `--every-s`, each on a
connection to a server that survives; then one server is killed (SIGKILL, no goodbye): the
leader of the members bucket's stream (the worst case: its group must elect a new leader), or
another server. The gap is the time from the kill to the first write (and read) that works
again. Repeated `--trials` times each way, on a fresh cluster each time.

    python -m load.bench.kv_failover [--trials 5] [--every-s 0.1]

What the control plane relies on (docs/reliability.md): serving never waits on KV; the
coordinator reads a failing KV as an outage, not as members leaving, and gives every member a
heartbeat TTL after it ends before declaring anyone gone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import nats

from runtime.kv import open_buckets
from runtime.nats_server import NatsCluster
from schemas.control import MEMBERS_BUCKET, ShardHeartbeat, encode


async def _probe(call, every_s: float, since: list[float], gaps: dict, name: str, stop: asyncio.Event) -> None:  # noqa: ANN001
    """Call every `every_s`; after the kill (since[0] > 0), record when the first call works."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(call(), timeout=2.0)
            if since[0] and name not in gaps:
                gaps[name] = time.monotonic() - since[0]
        except (nats.errors.Error, TimeoutError, OSError):
            pass
        await asyncio.sleep(every_s)


async def _quiet(_error: Exception) -> None:
    """The connection to the killed server reports its EOF; expected here."""


async def _stream_leader(nc: nats.NATS, stream: str) -> str:
    info = await nc.jetstream().stream_info(stream)
    return info.cluster.leader


async def trial(kill_leader: bool, every_s: float) -> dict:
    cluster = NatsCluster(3).start()
    try:
        probe_nc = await nats.connect(cluster.url_preferring(0).split(","), error_cb=_quiet)
        buckets = await open_buckets(probe_nc, heartbeat_ttl_s=3.0, lease_s=3.0, replicas=3)
        leader = await _stream_leader(probe_nc, f"KV_{MEMBERS_BUCKET}")
        names = [s.name for s in cluster.servers]
        victim = names.index(leader) if kill_leader else next(i for i, n in enumerate(names) if n != leader)
        survivor = next(i for i in range(3) if i != victim)
        await probe_nc.close()
        nc = await nats.connect(cluster.url_preferring(survivor).split(","), error_cb=_quiet)
        buckets = await open_buckets(nc, heartbeat_ttl_s=3.0, lease_s=3.0, replicas=3)
        beat = encode(ShardHeartbeat(shard_id="probe"))
        await buckets.state.put("assignment", b"{}")
        since, gaps, stop = [0.0], {}, asyncio.Event()
        probes = [asyncio.create_task(_probe(lambda: buckets.members.put("shard.probe", beat), every_s, since,
                                             gaps, "heartbeat", stop)),
                  asyncio.create_task(_probe(lambda: buckets.state.get("assignment"), every_s, since, gaps,
                                             "assignment_read", stop))]
        await asyncio.sleep(1.0)
        since[0] = time.monotonic()
        cluster.servers[victim].process.kill()
        deadline = time.monotonic() + 60
        while len(gaps) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*probes)
        await nc.close()
        return {"killed": "members stream leader" if kill_leader else "another server", **gaps}
    finally:
        cluster.stop()


async def run(trials: int, every_s: float) -> list[dict]:
    results = []
    for k in range(trials):
        for kill_leader in (True, False):
            result = await trial(kill_leader, every_s)
            print(f"trial {k + 1}/{trials}: {json.dumps(result)}", flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--every-s", type=float, default=0.1)
    args = parser.parse_args()
    results = asyncio.run(run(args.trials, args.every_s))
    for killed in ("members stream leader", "another server"):
        for what in ("heartbeat", "assignment_read"):
            gaps = [r[what] for r in results if r["killed"] == killed and what in r]
            if gaps:
                print(f"{killed:>22}, {what:<16} unavailable for: median {statistics.median(gaps):.2f} s, "
                      f"max {max(gaps):.2f} s ({len(gaps)} trials)")


if __name__ == "__main__":
    main()
