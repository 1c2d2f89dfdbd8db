"""What the OIP gateway costs: one gateway process against calling NATS directly, side by side.

A local cluster (`symphony up`'s processes: nats-server with users, one shard, one agent with a
cheap echo model that batches up to 512, and one gateway) serves both paths; this process is the
client. Two measurements, each alternating the paths so machine noise hits both alike:

1. **Light load**: one request at a time, `--light` of each interleaved: direct NATS
   (`SymphonyClient.infer`, JSON body), HTTP/REST (aiohttp, one keep-alive connection, the same
   JSON body) and gRPC (grpc.aio, one channel, raw FP32). p50/p99 per path and what the gateway
   adds to direct; then 5 s of HTTP from wrk on one connection (a C client, so the Python HTTP
   client's own cost is not in the figure).
2. **Throughput**: closed loops of `--concurrency` requests in flight for `--seconds`: HTTP by
   `wrk` (C, one thread: the generator is not the limit; absent wrk, the HTTP rows are skipped),
   direct NATS by asyncio tasks in this process. For each: requests/s, latency percentiles, and the
   CPU share of the gateway process and of this process, so the figure says who was the limit.

    python -m load.bench.gateway [--light 400] [--seconds 8] [--concurrency 64 256 1024]

Requests wait in the shard until their latest safe moment (the model's SLO here is 50 ms), so a
closed loop of C requests carries at most about C / 50 ms: the larger concurrencies are there to
find the processes' limits, and each row prints every process's CPU to say whose it was.

Writes results/bench-gateway/gateway.json and gateway.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as pb

from load.bench.reply_path import server_cpu_s as cpu_s
from load.live_report import percentiles
from runtime.client import SymphonyClient
from runtime.cluster import LocalCluster

CONFIG = """
subject_prefix = "symphony"
[[models]]
name = "echo"
kind = "sleep:2,50"
slo_ms = 50
batch_size_max = 512
[[agents]]
id = "agent-0"
slots = [{id = "s0", models = ["echo"]}, {id = "s1", models = ["echo"]}]
[[shards]]
id = "shard-0"
models = ["echo"]
slots = ["s0", "s1"]
"""
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1.5]}]}'
OUT = Path("results/bench-gateway")


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    return {**percentiles(np.asarray(samples_s) * 1e3), "n": len(samples_s)}


class Paths:
    """One client per path, each making one request and returning when its reply is read."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.errors: list[str] = []  # the first few failures' reasons, for the report

    async def open(self) -> None:
        self.direct = await SymphonyClient.connect(self.cluster.url, creds=self.cluster.creds_path("client"))
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=4096))
        self.http_url = f"{self.cluster.gateway_addresses['http']}/v2/models/echo/infer"
        self.channel = grpc.aio.insecure_channel(self.cluster.gateway_addresses["grpc"].split("://")[1])
        self.grpc_infer = self.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                                   request_serializer=pb.ModelInferRequest.SerializeToString,
                                                   response_deserializer=pb.ModelInferResponse.FromString)
        self.grpc_request = pb.ModelInferRequest(model_name="echo", raw_input_contents=[np.float32(1.5).tobytes()])
        self.grpc_request.inputs.add(name="x", datatype="FP32", shape=[1, 1])

    async def close(self) -> None:
        await self.session.close()
        await self.channel.close()
        await self.direct.close()

    async def direct_one(self) -> bool:
        result = await self.direct.infer("echo", BODY, content_type="application/json")
        if not result.ok:
            self.errors.append(f"direct {result.status}: {result.reason}")
        return result.ok

    async def http_one(self) -> bool:
        async with self.session.post(self.http_url, data=BODY, headers={"Content-Type": "application/json"}) as r:
            body = await r.read()
            if r.status != 200:
                self.errors.append(f"http {r.status}: {body[:200]!r}")
            return r.status == 200

    async def grpc_one(self) -> bool:
        try:
            reply = await self.grpc_infer(self.grpc_request, timeout=10)
        except grpc.aio.AioRpcError as error:
            self.errors.append(f"grpc {error.code().name}: {error.details()}")
            return False
        return len(reply.raw_output_contents) == 1


async def light_load(paths: Paths, count: int) -> dict:
    calls = {"direct": paths.direct_one, "http": paths.http_one, "grpc": paths.grpc_one}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    failures = 0
    for _ in range(20):  # warm connections, metadata caches, JIT-free paths
        for call in calls.values():
            await call()
    for i in range(count):
        for name, call in calls.items():
            started = time.perf_counter()
            failures += not await call()
            samples[name].append(time.perf_counter() - started)
        if i % 100 == 99:
            print(f"  light load: {i + 1}/{count}", flush=True)
    result = {name: percentiles_ms(s) for name, s in samples.items()}
    for door in ("http", "grpc"):
        result[f"{door}_added_p50_ms"] = result[door]["p50"] - result["direct"]["p50"]
        result[f"{door}_added_p99_ms"] = result[door]["p99"] - result["direct"]["p99"]
    result["failures"] = failures
    result["first_errors"] = paths.errors[:10]
    # The same one-at-a-time HTTP load from a C client (wrk, one connection): what the gateway adds
    # without the Python HTTP client's own cost in the figure.
    wrk = await asyncio.to_thread(wrk_http, paths.http_url, 1, 5.0)
    if wrk is not None:
        result["http_wrk"] = wrk
        result["http_wrk_added_p50_ms"] = wrk["p50"] - result["direct"]["p50"]
    return result


async def closed_loop(call, concurrency: int, seconds: float) -> dict:  # noqa: ANN001
    samples: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal failures
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            ok = await call()
            samples.append(time.perf_counter() - started)
            failures += not ok

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"rate": len(samples) / elapsed, "failures": failures, **percentiles_ms(samples)}


def wrk_http(url: str, concurrency: int, seconds: float) -> dict | None:
    if shutil.which("wrk") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                     f"wrk.body = '{BODY.decode()}'\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)

    def ms(label: str) -> float:
        value, unit = re.search(rf"\s{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"rate": rate, "failures": int(non_2xx.group(1)) if non_2xx else 0, "p50": ms("50"), "p90": ms("90"),
            "p99": ms("99")}


def cluster_pids(cluster: LocalCluster) -> dict[str, int]:
    """The processes whose CPU each phase reports: who was the limit."""
    pids = {name: process.pid for name, process in cluster.processes.items()}
    pids["nats-server"] = cluster.server.process.pid
    pids["this process"] = os.getpid()
    return pids


async def throughput(paths: Paths, pids: dict[str, int], concurrency: int, seconds: float) -> dict:
    result = {}
    for name in ("direct", "http", "grpc"):
        before, wall_before = {k: cpu_s(pid) for k, pid in pids.items()}, time.perf_counter()
        if name != "http":
            result[name] = await closed_loop({"direct": paths.direct_one, "grpc": paths.grpc_one}[name],
                                             concurrency, seconds)
        else:
            measured = await asyncio.to_thread(wrk_http, paths.http_url, concurrency, seconds)
            if measured is None:
                continue
            result[name] = measured
        wall = time.perf_counter() - wall_before
        cpu = {k: (cpu_s(pid) - before[k]) / wall for k, pid in pids.items()}
        result[name]["cpu"] = cpu  # cores busy, per process
        result[name]["gateway_us_per_request"] = cpu["gateway"] * 1e6 / max(result[name]["rate"], 1e-9)
        busiest = max(cpu, key=cpu.get)
        print(f"  c={concurrency} {name}: {result[name]['rate']:.0f} req/s, p50 {result[name]['p50']:.2f} ms, "
              f"p99 {result[name]['p99']:.2f} ms; CPU (cores) " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
              + f"; busiest: {busiest}", flush=True)
    for door in ("http", "grpc"):
        if door in result:
            result[f"{door}_over_direct"] = result[door]["rate"] / result["direct"]["rate"]
    return result


def plot(payload: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    light = payload["light"]
    names = ["direct", "http", "grpc"]
    for k, q in enumerate(("p50", "p99")):
        left.bar([i + 0.4 * k for i in range(3)], [light[n][q] for n in names], width=0.4, label=q)
    left.set_xticks([i + 0.2 for i in range(3)], ["NATS direct", "gateway HTTP", "gateway gRPC"])
    left.set_ylabel("latency, ms (one request at a time)")
    left.legend()
    rows = payload["throughput"]
    cs = [row["concurrency"] for row in rows]
    for name in ("direct", "http", "grpc"):
        if all(name in row for row in rows):
            right.plot(cs, [row[name]["rate"] for row in rows], marker="o",
                       label={"direct": "NATS direct (asyncio client)", "http": "gateway HTTP (wrk)",
                              "grpc": "gateway gRPC (grpc.aio client)"}[name])
    right.set_xscale("log", base=2)
    right.set_xlabel("requests in flight")
    right.set_ylabel("requests/s")
    right.legend()
    fig.suptitle("One gateway process against calling NATS directly (load/bench/gateway.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def run(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "cluster.toml"
        config.write_text(CONFIG)
        cluster = LocalCluster(config, log_dir=Path(tmp) / "logs", gateway=True)
        try:
            await cluster.start()
            paths = Paths(cluster)
            await paths.open()
            try:
                print("light load (one request at a time, paths interleaved)", flush=True)
                light = await light_load(paths, args.light)
                rows = []
                for concurrency in args.concurrency:
                    rows.append({"concurrency": concurrency, **await throughput(
                        paths, cluster_pids(cluster), concurrency, args.seconds)})
            finally:
                await paths.close()
        finally:
            cluster.stop()
    return {"light": light, "throughput": rows, "cpus": os.cpu_count(),
            "command": "python -m load.bench.gateway " + " ".join(
                [f"--light {args.light}", f"--seconds {args.seconds:g}",
                 "--concurrency " + " ".join(map(str, args.concurrency))])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--light", type=int, default=400, help="requests per path at light load")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    args = parser.parse_args()
    payload = asyncio.run(run(args))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "gateway.json").write_text(json.dumps(payload, indent=1))
    plot(payload, OUT / "gateway.png")
    light = payload["light"]
    wrk_line = (f"; HTTP from wrk (a C client) {light['http_wrk']['p50']:.2f}/{light['http_wrk']['p99']:.2f} "
                f"(adds {light['http_wrk_added_p50_ms']:.2f} at p50)" if "http_wrk" in light else "")
    print(f"\nlight load p50/p99 ms: direct {light['direct']['p50']:.2f}/{light['direct']['p99']:.2f}, "
          f"HTTP {light['http']['p50']:.2f}/{light['http']['p99']:.2f} "
          f"(adds {light['http_added_p50_ms']:.2f}/{light['http_added_p99_ms']:.2f}), "
          f"gRPC {light['grpc']['p50']:.2f}/{light['grpc']['p99']:.2f} "
          f"(adds {light['grpc_added_p50_ms']:.2f}/{light['grpc_added_p99_ms']:.2f}){wrk_line}; "
          f"failures {light['failures']}")
    for row in payload["throughput"]:
        ratio = row.get("http_over_direct")
        print(f"c={row['concurrency']}: direct {row['direct']['rate']:.0f} req/s" + (
            f", HTTP {row['http']['rate']:.0f} req/s, HTTP/direct {ratio:.2f}" if ratio else "")
            + f", gRPC {row['grpc']['rate']:.0f} req/s, gRPC/direct {row['grpc_over_direct']:.2f}")
    print(f"median HTTP/direct: {statistics.median(r['http_over_direct'] for r in payload['throughput']):.2f}"
          if all("http_over_direct" in r for r in payload["throughput"]) else "wrk not found: no HTTP rows")
    print(f"wrote {OUT}/gateway.json and gateway.png")


if __name__ == "__main__":
    main()
