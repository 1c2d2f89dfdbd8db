"""Shard throughput: the highest request rate one shard sustains with zero-cost sleep slots and
at least 99.9% of replies 200 within the SLO, side by side with a bare nats-py forwarder
(`bare_forwarder.py`) taking the same requests: the messaging limit on the same machine.

    python -m load.bench.shard_throughput [--rates 1000,2000,...] [--seconds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from load.sender import send_schedule
from ops.cluster import LocalCluster
from ops.nats_server import NatsServer

SLO_MS = 100.0
RESP_US = 2000
BATCH_MAX = 32
SUBJECT = "symphony.infer.zero"
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'
CONFIG_TEMPLATE = """
subject_prefix = "symphony"
[[models]]
name = "zero"
kind = "sleep:0,0"
slo_ms = 100
batch_size_max = BATCH_MAX
[[agents]]
id = "zero-agent"
slots = [{id = "z0", models = ["zero"]}, {id = "z1", models = ["zero"]}, {id = "z2", models = ["zero"]},
         {id = "z3", models = ["zero"]}]
[[shards]]
id = "shard-0"
models = ["zero"]
slots = ["z0", "z1", "z2", "z3"]
queue_len_max = 200000
resp_us = RESP_US
"""


def _judge(rate: float, result, label: str) -> dict:  # noqa: ANN001
    n = len(result.status)
    within = np.count_nonzero((result.status == 200) & (result.latency_s * 1000 <= SLO_MS))
    lag_p99 = float(np.nanpercentile(result.lag_s, 99) * 1000)
    row = {
        "target": label, "rate": rate, "requests": n, "within_slo": within / n,
        "replied": float(np.count_nonzero(result.status)) / n, "duplicates": result.duplicates,
        "p50_ms": float(np.nanpercentile(result.latency_s, 50) * 1000),
        "p99_ms": float(np.nanpercentile(result.latency_s, 99) * 1000),
        "sender_lag_p99_ms": lag_p99,
        "mean_batch": float(result.batch_size[result.status == 200].mean()) if within else 0.0,
    }
    row["ok"] = bool(row["within_slo"] >= 0.999 and lag_p99 < 20)
    print(f"[{label}] {rate:>7.0f} req/s: {row['within_slo']:.4%} within SLO, p99 {row['p99_ms']:.1f} ms, "
          f"sender lag p99 {lag_p99:.1f} ms, mean batch {row['mean_batch']:.1f} -> {'ok' if row['ok'] else 'FAIL'}",
          file=sys.stderr, flush=True)
    return row


async def sweep(url: str, label: str, rates: list[float], seconds: float) -> list[dict]:
    rows = []
    failures = 0
    for rate in rates:
        n = int(rate * seconds)
        times = np.arange(n) / rate
        result = await send_schedule(url, times, [SUBJECT] * n, [BODY] * n, drain_s=2.0)
        row = _judge(rate, result, label)
        rows.append(row)
        failures = 0 if row["ok"] else failures + 1
        if failures >= 2:
            break
        await asyncio.sleep(1.0)
    return rows


def best(rows: list[dict]) -> float:
    passing = [r["rate"] for r in rows if r["ok"]]
    return max(passing) if passing else 0.0


async def main_async(rates: list[float], seconds: float, out: Path) -> dict:
    config = out / "zero.toml"
    config.write_text(CONFIG_TEMPLATE.replace("RESP_US", str(RESP_US)).replace("BATCH_MAX", str(BATCH_MAX)))
    results: dict = {}
    with NatsServer() as server:
        bare = [subprocess.Popen([sys.executable, "-m", "load.bench.bare_forwarder", role, server.url, SUBJECT])
                for role in ("agent", "forwarder")]
        time.sleep(1.5)
        try:
            results["bare"] = await sweep(server.url, "bare forwarder", rates, seconds)
        finally:
            for p in bare:
                p.terminate()
                p.wait()
        cluster = LocalCluster(config, server.url, log_dir=out / "logs")
        await cluster.start()
        try:
            results["shard"] = await sweep(server.url, "symphony shard", rates, seconds)
        finally:
            cluster.stop()
    results["bare_max_rps"] = best(results["bare"])
    results["shard_max_rps"] = best(results["shard"])
    results["ratio"] = results["shard_max_rps"] / results["bare_max_rps"] if results["bare_max_rps"] else 0.0
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,2000,3000,4000,5000,6000,7000,8000,10000,12000")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--out", default="results/bench-shard-throughput")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async([float(r) for r in args.rates.split(",")], args.seconds, out))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"shard sustains {results['shard_max_rps']:.0f} req/s, bare forwarder {results['bare_max_rps']:.0f} "
          f"req/s: ratio {results['ratio']:.2f} (target >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
