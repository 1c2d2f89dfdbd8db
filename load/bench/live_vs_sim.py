"""Live versus simulated: the same workload through a live cluster of sleep agents and through
the simulator, goodput (replies 200 within the SLO, per second of the bench window) compared.

The live cluster is one agent with the workload's slots, each hosting every model as a sleep
model with the workload's profile, and one shard owning every model; requests are sent on the
workload's seeded schedule. The simulator runs the same schedule with the live shard's latency
constants.

    python -m load.bench.live_vs_sim [--workload example] [--scale 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from load.schedule import build_schedule
from load.sender import send_schedule
from load.sim.kernel import SimOptions
from load.sim.search import run_report
from load.workload import load_workload
from runtime.cluster import LocalCluster
from runtime.cluster_config import ShardEntry
from runtime.nats_server import NatsServer
from shard.core.config import CoreConfig, core_config_for

BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'


def cluster_toml(workload) -> str:  # noqa: ANN001
    lines = ['subject_prefix = "symphony"']
    for m in workload.models:
        lines += ["[[models]]", f'name = "{m.name}"', f'kind = "{m.profile}"', f"slo_ms = {m.slo_ms}",
                  f"batch_size_max = {m.batch_size_max or 256}"]
    names = ", ".join(f'"{m.name}"' for m in workload.models)
    slots = ", ".join(f'{{id = "s{i}", models = [{names}]}}' for i in range(workload.slots))
    lines += ["[[agents]]", 'id = "sleep-0"', f"slots = [{slots}]"]
    lines += ["[[shards]]", 'id = "shard-0"', f"models = [{names}]",
              "slots = [" + ", ".join(f'"s{i}"' for i in range(workload.slots)) + "]"]
    return "\n".join(lines) + "\n"


def live_core_config() -> CoreConfig:
    return core_config_for(ShardEntry(id="x", models=[], slots=[]))


async def run_live(workload_name: str, scale: float, out: Path) -> dict:
    loaded = load_workload(workload_name)
    workload = loaded.workload
    schedule = build_schedule(workload, scale=scale)
    config = out / "cluster.toml"
    config.write_text(cluster_toml(workload))
    names = [m.name for m in workload.models]
    times_s = schedule.times_ns / 1e9
    subjects = [f"symphony.infer.{names[i]}" for i in schedule.model_index]
    with NatsServer() as server:
        cluster = LocalCluster(config, server.url, log_dir=out / "logs")
        await cluster.start()
        try:
            result = await send_schedule(server.url, times_s, subjects, [BODY] * len(subjects), drain_s=3.0)
        finally:
            cluster.stop()
    slo_s = np.array([workload.models[i].slo_ms / 1000 for i in schedule.model_index])
    success = (result.status == 200) & (result.latency_s <= slo_s)
    goodput = 0.0
    for i, _name in enumerate(names):
        start, end = schedule.bench_start_ns[i], schedule.bench_end_ns[i]
        mask = (schedule.model_index == i) & (schedule.times_ns >= start) & (schedule.times_ns < end)
        goodput += np.count_nonzero(success & mask) / ((end - start) / 1e9)
    window = (schedule.times_ns >= min(schedule.bench_start_ns)) & (schedule.times_ns < max(schedule.bench_end_ns))
    return {
        "goodput_rps": goodput,
        "bad_rate": 1 - np.count_nonzero(success & window) / np.count_nonzero(window),
        "unanswered": int(np.count_nonzero(result.status == 0)),
        "duplicates": result.duplicates,
        "statuses": {str(k): int(v) for k, v in zip(*np.unique(result.status, return_counts=True), strict=True)},
        "p99_latency_ms": float(np.nanpercentile(result.latency_s, 99) * 1000),
        "sender_lag_p99_ms": float(np.nanpercentile(result.lag_s, 99) * 1000),
        "mean_batch": float(result.batch_size[result.status == 200].mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="example")
    parser.add_argument("--scale", type=float, default=2.0)
    parser.add_argument("--out", default="results/bench-live-vs-sim")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    options = SimOptions(scale=args.scale, core=live_core_config())
    sim = run_report(load_workload(args.workload), "symphony-plus", options)
    live = asyncio.run(run_live(args.workload, args.scale, out))
    ratio = live["goodput_rps"] / sim.goodput_rps if sim.goodput_rps else 0.0
    results = {"workload": args.workload, "scale": args.scale, "live": live,
               "sim": {"goodput_rps": sim.goodput_rps, "bad_rate": sim.bad_rate, "mean_batch": sim.mean_batch_size},
               "ratio": ratio}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(results, indent=1, default=str))
    print(f"live goodput {live['goodput_rps']:.1f}/s vs simulated {sim.goodput_rps:.1f}/s: ratio {ratio:.3f} "
          "(target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
