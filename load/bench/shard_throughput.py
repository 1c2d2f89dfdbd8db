"""Shard throughput: the highest request rate one shard sustains with zero-cost sleep slots and
at least 99.9% of replies 200 within the SLO, side by side with a bare nats-py forwarder
(`bare_forwarder.py`) taking the same requests: the messaging limit on the same machine. The
shard is swept twice on the same cluster: with one message per request, then with batched
ingress (`--batch` requests per `infer_many` message, docs/protocol.md; each request still gets
its own reply: `--replies batched`, one message per batch and plan, or `each`), starting at the
per-request ceiling.

A ceiling is only a ceiling if the rate above it failed, and only the target's if the load
generator kept its schedule there. So each target is offered rising rates until it fails twice
in a row (the given rates, then `--step` times the last, up to `--rate-max`); the requests come
from several sender processes (`sender_pool.py`, at most `--sender-rps` each), and every row
reports the senders' lag behind the schedule and where the machine's CPU went (nats-server, the
target's processes, the senders). A rate at which the senders' lag p99 exceeds `--lag-p99-max-ms`
is marked as the generator's, not the target's. The senders sleep between sends instead of
spinning (a spinning sender holds a core the target needs), so they send up to about a
millisecond late by design (1.1 ms p99 alone on an idle machine): hence 2 ms by default.

On a shared machine another job's burst would read as the target's limit, so each rate waits
for the CPU outside the benchmark to fall under 0.2 cores and is offered again if it rose during
the rate; rows where it stayed up are marked "noisy".

    python -m load.bench.shard_throughput [--rates 2000,4000,...] [--seconds 4] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from load.bench.reply_path import server_cpu_s
from load.bench.sender_pool import PooledResult, SenderPool, senders_for
from runtime.cluster import LocalCluster
from runtime.nats_server import NatsServer

SLO_MS = 100.0
WITHIN_SLO_MIN = 0.999
OTHERS_CORES_MAX = 0.2  # CPU used by processes outside the benchmark beyond which a row is "noisy"
RESP_US = 2000
BATCH_MAX = 32
TARGETS = {"shard": "shard", "shard_batched": "shard, batched", "bare": "bare"}  # results key: table column
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


@dataclass(frozen=True)
class SweepPlan:
    """How rates are offered to each target, and what counts as the generator keeping up."""

    rates: list[float]
    seconds: float
    step: float  # after the given rates: the next rate is the last one times this
    rate_max: float
    failures_max: int  # consecutive failing rates that end a target's sweep
    sender_rps: float  # most one sender process is asked for
    senders_max: int
    lag_p99_max_ms: float  # beyond it a rate is the generator's, not the target's
    quiet_wait_s_max: float  # most waited before a rate for other jobs to leave the CPU
    noisy_retries: int  # a rate during which other jobs used the CPU is offered again
    batch: int = 1  # requests per message: 1 is the per-request path, more is batched ingress
    replies_batched: bool = True  # with batches: 200s in batched reply messages, else one per request

    def offered(self) -> Iterator[float]:
        """The given rates, then geometrically more until `rate_max`: a sweep whose every rate
        passed has not found a ceiling, so it must not end there."""
        yield from self.rates
        rate = self.rates[-1] * self.step
        while rate <= self.rate_max:
            yield float(round(rate, -2))
            rate *= self.step


class CpuMeter:
    """CPU seconds of the processes under test and of the whole machine, from /proc: on a small
    shared machine the senders, nats-server and the target take turns on the same cores, and a
    ceiling means little without saying who used them."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.tick_s = 1.0 / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> dict[str, float]:
        cpu_s = {name: server_cpu_s(pid) for name, pid in self.pids.items()}
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        user, nice, system, idle, iowait, irq, softirq, steal = fields[:8]
        cpu_s["machine busy"] = (user + nice + system + irq + softirq) * self.tick_s
        cpu_s["steal"] = steal * self.tick_s
        return cpu_s

    @staticmethod
    def cores(before: dict[str, float], after: dict[str, float], wall_s: float) -> dict[str, float]:
        """Cores used over `wall_s` by each metered process, the machine, and everything else."""
        used = {name: (after[name] - before[name]) / wall_s for name in before}
        ours = sum(cores for name, cores in used.items() if name not in ("machine busy", "steal"))
        return used | {"others": used["machine busy"] - ours}


async def wait_quiet(meter: CpuMeter, wait_s_max: float) -> float:
    """Wait until processes outside the benchmark have used under OTHERS_CORES_MAX for two
    seconds in a row (or `wait_s_max` passed), and return the seconds waited: on a shared machine
    another job's burst would otherwise be measured as the target's limit."""
    started = time.monotonic()
    quiet_s = 0
    while quiet_s < 2 and time.monotonic() - started < wait_s_max:
        before = meter.snapshot()
        await asyncio.sleep(1.0)
        others = CpuMeter.cores(before, meter.snapshot(), 1.0)["others"]
        quiet_s = quiet_s + 1 if others <= OTHERS_CORES_MAX else 0
    return time.monotonic() - started


def with_senders(cores: dict[str, float], senders_cores: float) -> dict[str, float]:
    """The metered processes' cores plus the senders' (which meter themselves), and what the rest
    of the machine used: another job shows up as `others` instead of as a slower target."""
    return cores | {"senders": senders_cores, "others": cores["others"] - senders_cores}


def judge(rate: float, result: PooledResult, cores: dict[str, float], plan: SweepPlan) -> dict:
    """One rate's row: the target passes with >= 99.9% of requests 200 within the SLO; the
    generator kept up if its lag p99 on the common schedule stayed within the plan's bound."""
    n = len(result.status)
    ok = result.status == 200
    within = np.count_nonzero(ok & (result.latency_s * 1000 <= SLO_MS))
    latency_ms = result.latency_s[ok] * 1000
    lag_ms = result.lag_s * 1000
    row = {
        "rate": rate, "requests": n, "within_slo": within / n,
        "replied": float(np.count_nonzero(result.status)) / n, "duplicates": result.duplicates,
        "p50_ms": float(np.percentile(latency_ms, 50)) if latency_ms.size else float("nan"),
        "p99_ms": float(np.percentile(latency_ms, 99)) if latency_ms.size else float("nan"),
        "mean_batch": float(result.batch_size[ok].mean()) if latency_ms.size else 0.0,
        "senders": len(result.senders),
        "lag_p50_ms": float(np.percentile(lag_ms, 50)), "lag_p99_ms": float(np.percentile(lag_ms, 99)),
        "lag_max_ms": float(lag_ms.max()),
        "sender_ledgers": [asdict(s) for s in result.senders],
        "cores": with_senders(cores, sum(s.send_cpu_s for s in result.senders) / plan.seconds),
    }
    row["ok"] = bool(row["within_slo"] >= WITHIN_SLO_MIN)
    row["generator_on_schedule"] = bool(row["lag_p99_ms"] <= plan.lag_p99_max_ms)
    row["quiet"] = bool(row["cores"]["others"] <= OTHERS_CORES_MAX)
    return row


def print_row(label: str, row: dict) -> None:
    """Progress on stderr, one rate at a time: a sweep takes minutes."""
    cores = "  ".join(f"{name} {used:.2f}" for name, used in row["cores"].items())
    verdict = "ok" if row["ok"] else "FAIL"
    generator = "" if row["generator_on_schedule"] else "  [senders behind: the generator's figure]"
    generator += "" if row["quiet"] else "  [machine not quiet: others used CPU]"
    print(f"[{label}] {row['rate']:>7.0f} req/s x{row['senders']}: {row['within_slo']:.4%} within SLO, "
          f"p99 {row['p99_ms']:.1f} ms, batch {row['mean_batch']:.1f}, sender lag p50/p99/max "
          f"{row['lag_p50_ms']:.2f}/{row['lag_p99_ms']:.2f}/{row['lag_max_ms']:.1f} ms -> {verdict}{generator}\n"
          f"{'':>12}cores: {cores}", file=sys.stderr, flush=True)


async def offer(pool: SenderPool, meter: CpuMeter, rate: float, plan: SweepPlan) -> dict:
    """Offer one rate and meter the CPU over exactly its send window."""
    senders = senders_for(rate, plan.sender_rps, plan.senders_max)
    start_wall = pool.start_wall_for(senders)
    sending = asyncio.create_task(pool.send_uniform(rate, plan.seconds, SUBJECT, BODY, senders=senders,
                                                    start_wall=start_wall, batch=plan.batch,
                                                    replies_batched=plan.replies_batched))
    await asyncio.sleep(max(0.0, start_wall - time.time()))
    before = meter.snapshot()
    await asyncio.sleep(plan.seconds)
    cores = CpuMeter.cores(before, meter.snapshot(), plan.seconds)
    return judge(rate, await sending, cores, plan)


async def offer_quietly(pool: SenderPool, meter: CpuMeter, label: str, rate: float, plan: SweepPlan) -> dict:
    """Offer a rate once the machine is quiet, again (up to `noisy_retries` times) if another
    job used the machine meanwhile; the row says how often and how long it waited."""
    noisy: list[dict] = []
    for _ in range(plan.noisy_retries + 1):
        waited_s = await wait_quiet(meter, plan.quiet_wait_s_max)
        row = await offer(pool, meter, rate, plan) | {"waited_s": waited_s}
        print_row(label, row)
        if row["quiet"]:
            break
        noisy.append({k: row[k] for k in ("within_slo", "lag_p99_ms", "cores")})
    return row | {"noisy_attempts": noisy}


async def sweep(pool: SenderPool, meter: CpuMeter, label: str, plan: SweepPlan) -> list[dict]:
    """Rising rates until the target fails `failures_max` times in a row."""
    # Not judged: the first requests to a fresh process meet cold paths and new connections.
    await offer(pool, meter, plan.rates[0] / 2, replace(plan, seconds=1.0))
    rows: list[dict] = []
    failures = 0
    for rate in plan.offered():
        row = await offer_quietly(pool, meter, label, rate, plan)
        rows.append(row)
        failures = 0 if row["ok"] else failures + 1
        if failures >= plan.failures_max:
            break
    return rows


def ceiling(rows: list[dict]) -> dict:
    """The highest passing rate, the first failing rate above it, and whether the generator kept
    its schedule at both: only then is the ceiling the target's."""
    passing = [r for r in rows if r["ok"]]
    best = max(passing, key=lambda r: r["rate"]) if passing else None
    best_rps = best["rate"] if best else 0.0
    above = [r for r in rows if not r["ok"] and r["rate"] > best_rps]
    failing = min(above, key=lambda r: r["rate"]) if above else None
    found = failing is not None
    return {
        "rate": best_rps, "found": found,
        "lag_p99_ms": best["lag_p99_ms"] if best else float("nan"),
        "first_failing_rate": failing["rate"] if failing else None,
        "first_failing_within_slo": failing["within_slo"] if failing else None,
        "first_failing_lag_p99_ms": failing["lag_p99_ms"] if failing else None,
        "generator_bound": bool((best is not None and not best["generator_on_schedule"])
                                or (failing is not None and not failing["generator_on_schedule"])),
        "failed_below": sorted(r["rate"] for r in rows if not r["ok"] and r["rate"] < best_rps),
        "quiet": all(r["quiet"] for r in (best, failing) if r is not None),
    }


async def run_bare(pool: SenderPool, server: NatsServer, plan: SweepPlan) -> list[dict]:
    """The bare forwarder's sweep, its two processes metered beside nats-server."""
    bare = {role: subprocess.Popen([sys.executable, "-m", "load.bench.bare_forwarder", role, server.url, SUBJECT])
            for role in ("agent", "forwarder")}
    await asyncio.sleep(1.5)
    meter = CpuMeter({"nats-server": server.process.pid} | {f"bare {r}": p.pid for r, p in bare.items()})
    try:
        return await sweep(pool, meter, "bare forwarder", plan)
    finally:
        for process in bare.values():
            process.terminate()
            process.wait()


async def run_shard(pool: SenderPool, server: NatsServer, plan: SweepPlan, out: Path,
                    batch: int) -> tuple[list[dict], list[dict]]:
    """The shard's sweeps, per request then batched (from the per-request ceiling up): one shard
    and one agent of `CONFIG_TEMPLATE`, every process metered."""
    config = out / "zero.toml"
    config.write_text(CONFIG_TEMPLATE.replace("RESP_US", str(RESP_US)).replace("BATCH_MAX", str(BATCH_MAX)))
    cluster = LocalCluster(config, server.url, log_dir=out / "logs")
    await cluster.start()
    meter = CpuMeter({"nats-server": server.process.pid} | {n: p.pid for n, p in cluster.processes.items()})
    try:
        single = await sweep(pool, meter, "symphony shard", plan)
        start = max(ceiling(single)["rate"], plan.rates[0])
        batched_plan = replace(plan, batch=batch, rates=[r for r in plan.rates if r >= start] or [start])
        label = f"shard, batches of {batch}, {'batched replies' if plan.replies_batched else 'reply per request'}"
        return single, await sweep(pool, meter, label, batched_plan)
    finally:
        cluster.stop()


async def main_async(plan: SweepPlan, out: Path, batch: int) -> dict:
    """Every sweep in one run on one nats-server and one sender pool, so the ratios compare
    targets measured under the same conditions."""
    results: dict = {"plan": asdict(plan), "cpus": os.cpu_count(), "batch": batch,
                     "replies": "batched" if plan.replies_batched else "each"}
    with NatsServer() as server, SenderPool(server.url, plan.senders_max) as pool:
        results["bare"] = await run_bare(pool, server, plan)
        results["shard"], results["shard_batched"] = await run_shard(pool, server, plan, out, batch)
    for target in TARGETS:
        results[f"{target}_ceiling"] = ceiling(results[target])
    bare_rps, shard_rps = results["bare_ceiling"]["rate"], results["shard_ceiling"]["rate"]
    results["ratio"] = shard_rps / bare_rps if bare_rps else 0.0
    results["batched_ratio"] = results["shard_batched_ceiling"]["rate"] / shard_rps if shard_rps else 0.0
    return results


def side_by_side(results: dict) -> str:
    """A markdown table of every sweep by rate: verdict, 200-in-SLO fraction, sender lag p99."""
    by_rate: dict[float, dict[str, dict]] = {}
    for target in TARGETS:
        for row in results[target]:
            by_rate.setdefault(row["rate"], {})[target] = row

    def cell(row: dict | None) -> str:
        if row is None:
            return "- | - | -"
        behind = ("" if row["generator_on_schedule"] else " (behind)") + ("" if row["quiet"] else " (noisy)")
        return f"{'pass' if row['ok'] else 'FAIL'} | {row['within_slo']:.2%} | {row['lag_p99_ms']:.2f}{behind}"

    head = "".join(f" {name} | 200 in SLO | sender lag p99 (ms) |" for name in TARGETS.values())
    lines = [f"| rate (req/s) |{head}", "|---" * (1 + 3 * len(TARGETS)) + "|"]
    lines += [f"| {rate:,.0f} | " + " | ".join(cell(rows.get(t)) for t in TARGETS) + " |"
              for rate, rows in sorted(by_rate.items())]
    return "\n".join(lines)


def summary(results: dict) -> str:
    """Each ceiling with the senders' lag there and at the first failing rate, and the ratio."""
    def one(name: str, c: dict) -> str:
        if not c["found"]:
            return f"{name}: passed every rate offered up to {c['rate']:,.0f} req/s: no ceiling found"
        text = (f"{name}: {c['rate']:,.0f} req/s (sender lag p99 {c['lag_p99_ms']:.2f} ms); first failing "
                f"{c['first_failing_rate']:,.0f} req/s ({c['first_failing_within_slo']:.2%} within SLO, "
                f"sender lag p99 {c['first_failing_lag_p99_ms']:.2f} ms)")
        text += "  [senders behind schedule there: the generator's figure]" if c["generator_bound"] else ""
        text += f"  [also failed below it: {c['failed_below']}]" if c["failed_below"] else ""
        return text + ("" if c["quiet"] else "  [other jobs used the machine there]")

    return "\n".join([one("shard ceiling", results["shard_ceiling"]),
                      one(f"shard ceiling, batches of {results['batch']} ({results['replies']} replies)",
                          results["shard_batched_ceiling"]),
                      one("bare ceiling", results["bare_ceiling"]),
                      f"ratio shard/bare {results['ratio']:.2f} (target >= 0.7), batched/per-request "
                      f"{results['batched_ratio']:.2f} (target >= 4), measured side by side on "
                      f"{results['cpus']} CPUs shared by nats-server, the target and the senders"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="2000,4000,5000,6000,7000,8000,9000,10000,11000,12000,14000,16000,"
                                          "18000,20000,24000")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--step", type=float, default=1.2)
    parser.add_argument("--rate-max", type=float, default=100_000)
    parser.add_argument("--failures-max", type=int, default=2)
    parser.add_argument("--sender-rps", type=float, default=4000, help="most one sender process is asked for")
    parser.add_argument("--senders-max", type=int, default=8)
    parser.add_argument("--lag-p99-max-ms", type=float, default=2.0)
    parser.add_argument("--quiet-wait-s-max", type=float, default=120.0)
    parser.add_argument("--noisy-retries", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="requests per message on the batched sweep")
    parser.add_argument("--replies", choices=("batched", "each"), default="batched",
                        help="batched sweep: 200s in one message per batch and plan, or one per request")
    parser.add_argument("--out", default="results/bench-shard-throughput")
    args = parser.parse_args(argv)
    plan = SweepPlan(rates=[float(r) for r in args.rates.split(",")], seconds=args.seconds, step=args.step,
                     rate_max=args.rate_max, failures_max=args.failures_max, sender_rps=args.sender_rps,
                     senders_max=args.senders_max, lag_p99_max_ms=args.lag_p99_max_ms,
                     quiet_wait_s_max=args.quiet_wait_s_max, noisy_retries=args.noisy_retries,
                     replies_batched=args.replies == "batched")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = asyncio.run(main_async(plan, out, args.batch))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(side_by_side(results))
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
