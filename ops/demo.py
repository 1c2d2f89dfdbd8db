"""`symphony demo`: bring up the demo cluster, print every role's metrics URL, send open-loop load
for a while, print a summary per model (sent, ok, dropped, errors, p50/p99 latency, mean batch),
and shut everything down."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from load.demo import DEMO_RATES
from runtime.client import InferResult, SymphonyClient
from runtime.cluster import LocalCluster
from runtime.cluster_config import DEMO_CONFIG
from runtime.status import metrics_lines
from schemas.status import Status


async def _send(client: SymphonyClient, model: str, rps: float, seconds: float, results: list,
                inputs: dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng(hash(model) % 2**32)
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = start
    pending = set()
    while True:
        due += rng.exponential(1 / rps)
        if due - start > seconds:
            break
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

        async def one(sent: float = loop.time()) -> None:
            result = await client.infer(model, inputs, timeout_s=5.0)
            results.append((result, loop.time() - sent))

        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)


def _summary(results: dict[str, list[tuple[InferResult, float]]], seconds: float, slo_ms: dict[str, float]) -> str:
    lines = [f"{'model':<14}{'sent':>7}{'ok':>7}{'late':>6}{'dropped':>9}{'rejected':>10}{'errors':>8}"
             f"{'goodput/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}"]
    for model, rows in results.items():
        ok = [(r, lat) for r, lat in rows if r.ok]
        late = sum(1 for _r, lat in ok if lat * 1000 > slo_ms[model])
        dropped = sum(1 for r, _ in rows if r.status == Status.DROPPED)
        rejected = sum(1 for r, _ in rows if r.status in (Status.OVERLOADED, Status.UNAVAILABLE))
        errors = len(rows) - len(ok) - dropped - rejected
        latencies = np.array([lat for _, lat in ok]) * 1000 if ok else np.array([np.nan])
        batch = np.mean([r.batch_size for r, _ in ok]) if ok else float("nan")
        lines.append(f"{model:<14}{len(rows):>7}{len(ok):>7}{late:>6}{dropped:>9}{rejected:>10}{errors:>8}"
                     f"{(len(ok) - late) / seconds:>11.1f}{np.percentile(latencies, 50):>9.1f}"
                     f"{np.percentile(latencies, 99):>9.1f}{batch:>12.1f}")
    return "\n".join(lines)


async def run_demo(config: str = str(DEMO_CONFIG), seconds: float = 20.0,
                   rates: dict[str, float] | None = None) -> str:
    rates = rates or DEMO_RATES
    cluster = LocalCluster(config, log_dir=Path("results/demo-logs"))
    print("starting the demo cluster: nats-server, agents (compiling and profiling JAX models), shards...",
          flush=True)
    started = time.monotonic()
    try:
        url = await cluster.start()
        print(f"up at {url} after {time.monotonic() - started:.0f} s", flush=True)
        print("\n".join(metrics_lines(await cluster.metrics_endpoints())), flush=True)
        print(f"sending load for {seconds:.0f} s: " + ", ".join(f"{m} {r:g}/s" for m, r in rates.items()),
              flush=True)
        client = await SymphonyClient.connect(url, creds=cluster.creds_path("client"))
        results: dict[str, list] = defaultdict(list)
        try:
            inputs = {}
            slo_ms = {}
            for model in rates:
                meta = await client.metadata(model)
                slo_ms[model] = meta.slo_ms
                inputs[model] = {s.name: (np.zeros([1, *s.shape[1:]], np.int32) if s.datatype.startswith("INT")
                                          else np.random.default_rng(0).standard_normal([1, *s.shape[1:]])
                                          .astype(np.float32)) for s in meta.inputs}
            progress = asyncio.create_task(_progress(results, seconds))
            await asyncio.gather(*(_send(client, m, r, seconds, results[m], inputs[m]) for m, r in rates.items()))
            progress.cancel()
        finally:
            await client.close()
        return _summary(results, seconds, slo_ms) + (
            "\nlatency is measured at the client; late = ok but later than the model's SLO; "
            "goodput = ok within SLO per second")
    finally:
        print("shutting down...", flush=True)
        cluster.stop()


async def _progress(results: dict[str, list], seconds: float) -> None:
    start = time.monotonic()
    while True:
        await asyncio.sleep(5)
        done = sum(len(v) for v in results.values())
        ok = sum(1 for v in results.values() for r, _ in v if r.ok)
        print(f"  {time.monotonic() - start:4.0f}/{seconds:.0f} s: {done} replies, {ok} ok", flush=True)


def main(seconds: float) -> int:
    summary = asyncio.run(run_demo(seconds=seconds))
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0))
