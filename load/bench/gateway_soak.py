"""The gateway under steady load for a long time: does anything grow, is every call answered?

A local cluster with one gateway (the echo model of load/bench/gateway.py), HTTP load from `wrk`
(closed loop, `--connections`) and a gRPC trickle (grpc.aio, `--grpc-concurrency` calls in flight)
for `--minutes`. Every `--sample-s` it reads the gateway's own metrics and its resident memory:
calls by status, calls in flight, batch messages with a caller still waiting, and RSS. At the end
load stops and the gateway must be idle: nothing in flight, no batch open; wrk must report no
socket errors or timeouts, the calls the gateway answered must match those the clients completed
(every call its one reply), and memory must not grow from the first half to the second.

    python -m load.bench.gateway_soak [--minutes 20] [--connections 64] [--sample-s 30]

Writes results/bench-gateway/soak.json and soak.png; exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from load.bench.gateway import BODY, CONFIG, OUT, Paths
from runtime.cluster import LocalCluster


def scrape(url: str) -> dict[str, float]:
    """The gateway's metric samples we watch, by name (calls summed per status)."""
    values: dict[str, float] = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        if line.startswith("#") or not line.startswith("symphony_gateway_"):
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("symphony_gateway_calls_total"):
            status = re.search(r'status="(\d+)"', name).group(1)
            values[f"calls_{status}"] = values.get(f"calls_{status}", 0.0) + float(value)
        elif "{" not in name:
            values[name.removeprefix("symphony_gateway_")] = float(value)
    return values


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def grpc_trickle(paths: Paths, concurrency: int, stop: asyncio.Event) -> dict[str, int]:
    counts = {"ok": 0, "failed": 0}

    async def worker() -> None:
        while not stop.is_set():
            counts["ok" if await paths.grpc_one() else "failed"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts


async def soak(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cluster.toml"
        config.write_text(CONFIG)
        script = Path(tmp) / "post.lua"
        script.write_text(f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                          f"wrk.body = '{BODY.decode()}'\n")
        cluster = LocalCluster(config, log_dir=Path(tmp) / "logs", gateway=True)
        try:
            await cluster.start()
            metrics_url = cluster.gateway_addresses["metrics"]
            pid = cluster.processes["gateway"].pid
            paths = Paths(cluster)
            await paths.open()
            seconds = args.minutes * 60
            wrk = await asyncio.create_subprocess_exec(
                "wrk", "-t1", f"-c{args.connections}", f"-d{seconds:.0f}s", "--timeout", "10s", "--latency",
                "-s", str(script), paths.http_url, stdout=subprocess.PIPE)
            stop = asyncio.Event()
            trickle = asyncio.create_task(grpc_trickle(paths, args.grpc_concurrency, stop))
            samples = []
            started = time.monotonic()
            while time.monotonic() - started < seconds:
                await asyncio.sleep(min(args.sample_s, max(0.0, seconds - (time.monotonic() - started))))
                sample = {"t_s": round(time.monotonic() - started, 1), "rss_mb": rss_mb(pid), **scrape(metrics_url)}
                samples.append(sample)
                print(f"  {sample['t_s']:7.0f} s: rss {sample['rss_mb']:.1f} MB, "
                      f"200s {sample.get('calls_200', 0):.0f}, in flight {sample.get('calls_in_flight', 0):.0f}, "
                      f"batches open {sample.get('batches_open', 0):.0f}", flush=True)
            wrk_out = (await wrk.communicate())[0].decode()
            stop.set()
            grpc_counts = await trickle
            await asyncio.sleep(2.0)  # let the last replies land
            final = {"rss_mb": rss_mb(pid), **scrape(metrics_url)}
            await paths.close()
        finally:
            cluster.stop()
    return {"samples": samples, "final": final, "wrk": wrk_out, "grpc": grpc_counts,
            "minutes": args.minutes, "connections": args.connections}


def judge(result: dict) -> list[str]:
    failed = []
    final, wrk = result["final"], result["wrk"]
    if final.get("calls_in_flight", 0) or final.get("batches_open", 0):
        failed.append(f"not idle at the end: {final.get('calls_in_flight')} in flight, "
                      f"{final.get('batches_open')} batches open")
    errors = re.search(r"Socket errors:.*", wrk)
    if errors:
        failed.append(f"wrk: {errors.group(0)}")
    answered = sum(v for k, v in final.items() if k.startswith("calls_") and k[6:].isdigit())
    completed = int(re.search(r"(\d+) requests in", wrk).group(1)) + sum(result["grpc"].values())
    # wrk abandons the calls in flight when its time is up (at most one per connection); the
    # gateway still answers them, so it may count up to that many more than the clients did.
    if not 0 <= answered - completed <= result["connections"]:
        failed.append(f"the gateway answered {answered:.0f} calls, the clients completed {completed}")
    result["answered"], result["completed"] = answered, completed
    rss = [s["rss_mb"] for s in result["samples"]]
    half = len(rss) // 2
    if half and max(rss[half:]) > 1.2 * max(rss[:half]) + 10:
        failed.append(f"RSS grew: {max(rss[:half]):.1f} MB in the first half, {max(rss[half:]):.1f} in the second")
    return failed


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [s["t_s"] / 60 for s in samples]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(t, [s["rss_mb"] for s in samples], marker=".")
    left.set_xlabel("minutes")
    left.set_ylabel("gateway RSS, MB")
    rates = [0.0] + [(b.get("calls_200", 0) - a.get("calls_200", 0)) / max(b["t_s"] - a["t_s"], 1e-9)
                     for a, b in zip(samples, samples[1:], strict=False)]
    right.plot(t, rates, marker=".", label="200s/s")
    right.plot(t, [s.get("batches_open", 0) for s in samples], marker=".", label="batches open")
    right.set_xlabel("minutes")
    right.legend()
    fig.suptitle(f"Gateway soak: {result['minutes']:g} min, wrk -c{result['connections']} "
                 "plus a gRPC trickle (load/bench/gateway_soak.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--grpc-concurrency", type=int, default=4)
    parser.add_argument("--sample-s", type=float, default=30.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed (apt-get install wrk)")
    result = asyncio.run(soak(args))
    OUT.mkdir(parents=True, exist_ok=True)
    failed = judge(result)
    result["failed"] = failed
    (OUT / "soak.json").write_text(json.dumps(result, indent=1))
    plot(result, OUT / "soak.png")
    print(result["wrk"])
    print(f"gRPC trickle: {result['grpc']}; final: {result['final']}")
    print("PASS" if not failed else "FAIL: " + "; ".join(failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
