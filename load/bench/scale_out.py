"""Live scale-out of one hot model (issue 14): the model split over 1, 2 and 4 shard processes
by the coordinator, zero-cost slots, rising rates from several sender processes, in one run.

For each shard count: the split the coordinator made (every shard serving the model, with its
slots), then at every rate the ledger (unanswered, duplicates, 200 within the SLO), the share
of the requests each shard took against its share of the slots, the senders' lag and where the
CPU went. The sweep and the CPU metering are `shard_throughput`'s, so a ceiling is only called
one when the rate above it failed with the senders on schedule and the machine quiet.

On two cores the shards, the agents, nats-server and the senders share the same CPUs: more
shards cannot raise the ceiling here, and the table shows where the cores went instead. The
split's correctness (exactly once, shares that follow the slots) is what this machine can show.

    python -m load.bench.scale_out [--shards 1,2,4] [--rates 2000,3000,4000] [--seconds 4]
        [--out results/bench-scale-out]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from load.bench.sender_pool import SenderPool
from load.bench.shard_throughput import BODY, RESP_US, CpuMeter, SweepPlan, ceiling, offer, offer_quietly
from runtime.cluster import LocalCluster
from runtime.connect import connect_client
from runtime.kv import open_buckets, read_assignment
from runtime.nats_server import NatsServer
from runtime.status import received_by_shard

SLOTS = [f"z{i}" for i in range(8)]


def config_toml(shards: int) -> str:
    """A coordinated cluster: one zero-cost model on 8 slots of one agent, `shards` shards, and a
    split budget so low that the model is split over every shard."""
    slots = ", ".join(f'{{id = "{s}", models = ["zero"]}}' for s in SLOTS)
    lines = ['subject_prefix = "symphony"', "[coordinator]", "count = 1", "epoch_s = 1.0", "lease_s = 1.5",
             "heartbeat_ttl_s = 1.5", "shard_rps_max = 1", "[[models]]", 'name = "zero"', 'kind = "sleep:0,0"',
             "slo_ms = 100", "batch_size_max = 32", "[[agents]]", 'id = "zero-agent"', f"slots = [{slots}]"]
    for k in range(shards):
        lines += ["[[shards]]", f'id = "shard-{k}"', "queue_len_max = 200000", f"resp_us = {RESP_US}"]
    return "\n".join(lines) + "\n"


async def split_of(url: str, shards: int, timeout_s: float = 30.0) -> dict[str, int]:
    """Wait for the coordinator to split the model over every shard: shard -> slots it holds."""
    nc = await connect_client(url, "bench-scale-out", user="operator")
    try:
        buckets = await open_buckets(nc, heartbeat_ttl_s=1.5, lease_s=1.5)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assignment, _rev = await read_assignment(buckets.state)
            if assignment is not None and len(assignment.shards_of("zero")) == shards:
                await asyncio.sleep(2.0)  # every shard has applied it and weighed its ingress
                return {s: sum(1 for o in assignment.slots.values() if o == s) for s in assignment.shards_of("zero")}
            await asyncio.sleep(0.25)
        raise TimeoutError(f"the model was not split over {shards} shards")
    finally:
        await nc.close()


async def trickle(url: str, rate_rps: float, stop: asyncio.Event) -> int:
    """A few requests a second between the measured rates, so that the model keeps its traffic
    and its split while the sweep waits for a quiet machine (without traffic it merges back, as
    it should: BENCHMARKS.md §12.2). Replies go to an inbox nobody counts."""
    nc = await connect_client(url, "bench-scale-out-trickle", user="operator")
    inbox = nc.new_inbox()
    sub = await nc.subscribe(f"{inbox}.>")
    sent = 0
    try:
        while not stop.is_set():
            await nc.publish("symphony.infer.zero", BODY, reply=f"{inbox}.{sent}")
            sent += 1
            await asyncio.sleep(1 / rate_rps)
    finally:
        await sub.unsubscribe()
        await nc.close()
    return sent


async def run_count(pool: SenderPool, server: NatsServer, plan: SweepPlan, shards: int, out: Path) -> dict:
    """One shard count: start the cluster, wait for the split, sweep the rates with shares."""
    path = out / f"scale-out-{shards}.toml"
    path.write_text(config_toml(shards))
    cluster = LocalCluster(path, server.url, log_dir=out / f"logs-{shards}")
    await cluster.start()
    try:
        meter = CpuMeter({"nats-server": server.process.pid} | {n: p.pid for n, p in cluster.processes.items()
                                                                  if not n.startswith("coordinator")})
        # Warm-up, not judged: the coordinator splits the model once it sees the traffic.
        warm = asyncio.create_task(offer(pool, meter, plan.rates[0] / 4, replace(plan, seconds=8.0)))
        slots = await split_of(server.url, shards)
        await warm
        stop = asyncio.Event()
        keep = asyncio.create_task(trickle(server.url, 20.0, stop))
        rows, failures = [], 0
        for rate in plan.offered():
            before = await received_by_shard(server.url, "zero", list(slots))
            row = await offer_quietly(pool, meter, f"{shards} shard(s)", rate, plan)
            after = await received_by_shard(server.url, "zero", list(slots))
            taken = {s: after[s] - before[s] for s in slots}
            total = sum(taken.values()) or 1
            row["shares"] = {s: {"took": taken[s] / total, "slots": slots[s] / sum(slots.values())} for s in slots}
            rows.append(row)
            failures = 0 if row["ok"] else failures + 1
            if failures >= plan.failures_max:
                break
        stop.set()
        await keep
        return {"shards": shards, "slots": slots, "rows": rows, "ceiling": ceiling(rows)}
    finally:
        cluster.stop()


def report(results: list[dict]) -> str:
    lines = ["| shards | rate (req/s) | 200 in SLO | unanswered | duplicates | worst share vs slot share | "
             "sender lag p99 (ms) | cores: shards / agent / nats / senders / others |",
             "|---|---|---|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:
            worst = max(abs(v["took"] - v["slots"]) / v["slots"] for v in row["shares"].values())
            cores = row["cores"]
            shard_cores = sum(v for k, v in cores.items() if k.startswith("shard-"))
            agent_cores = sum(v for k, v in cores.items() if k.startswith("agent-"))
            lines.append(f"| {result['shards']} | {row['rate']:,.0f} | {row['within_slo']:.2%} | "
                         f"{1 - row['replied']:.4%} | {row['duplicates']} | {worst:.1%} | {row['lag_p99_ms']:.2f} | "
                         f"{shard_cores:.2f} / {agent_cores:.2f} / {cores['nats-server']:.2f} / "
                         f"{cores['senders']:.2f} / {cores['others']:.2f} |")
    lines.append("")
    for result in results:
        c = result["ceiling"]
        found = "found" if c["found"] else "not found (every rate passed)"
        flags = " [generator-bound]" if c["generator_bound"] else ""
        lines.append(f"{result['shards']} shard(s), slots {result['slots']}: ceiling {c['rate']:,.0f} req/s, "
                     f"{found}{flags}")
    return "\n".join(lines)


async def main_async(plan: SweepPlan, counts: list[int], out: Path) -> list[dict]:
    with NatsServer() as server, SenderPool(server.url, plan.senders_max) as pool:
        return [await run_count(pool, server, plan, k, out) for k in counts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="1,2,4")
    parser.add_argument("--rates", default="2000,3000,4000,5000,6000")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--step", type=float, default=1.2)
    parser.add_argument("--rate-max", type=float, default=30_000)
    parser.add_argument("--sender-rps", type=float, default=4000)
    parser.add_argument("--senders-max", type=int, default=6)
    parser.add_argument("--quiet-wait-s-max", type=float, default=30.0)
    parser.add_argument("--out", default="results/bench-scale-out")
    args = parser.parse_args(argv)
    plan = SweepPlan(rates=[float(r) for r in args.rates.split(",")], seconds=args.seconds, step=args.step,
                     rate_max=args.rate_max, failures_max=2, sender_rps=args.sender_rps, senders_max=args.senders_max,
                     lag_p99_max_ms=2.0, quiet_wait_s_max=args.quiet_wait_s_max, noisy_retries=1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async(plan, [int(k) for k in args.shards.split(",")], out))
    (out / "results.json").write_text(json.dumps({"plan": asdict(plan), "cpus": os.cpu_count(), "runs": results},
                                                 indent=1))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
