"""Live autoscaling on a steps load (issue 13 §4): a local cluster run as `symphony up
--autoscale` does (coordinators running the autoscaler, the cluster starting and stopping agent
processes as it decides), the steps workload's shape (high -> a quarter -> high, repeated) sent
open-loop with a reply ledger, and the decisions recorded as a time series.

Scaled down for a 2-core host: one sleep model whose cost makes a few hundred requests per
second need 3 slots, 4 agents of one slot each. What it measures:
- the ledger: every request id answered exactly once (unanswered and duplicates must both be 0,
  across every scale-down);
- how the active slots follow the load: per step, the target and active slots reached, and how
  long after the step the target and then the active slots got there.

    python -m load.bench.autoscale_live --cycles 4 --step-s 30 --out results/autoscale_live
writes `<out>.json` (summary and time series) and `<out>.png`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from load.sender import SendResult, send_schedule
from runtime.cluster import LocalCluster

MODEL = "steps_sleep"
KIND = "sleep:4000,5000"  # 4 ms per request plus 5 ms per batch: 400 req/s keep about 2 slots busy
SLO_MS = 200.0
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'


def cluster_toml(*, slots: int = 4, epoch_s: float = 1.0, cold_start_s: float = 1.0, down_cooldown_s: float = 2.0,
                 down_window_s: float = 3.0) -> str:
    """One agent process per slot (so the actuator's unit is one slot), one shard, two
    coordinators, the autoscaler's timings short enough for a run of a minute."""
    lines = ['subject_prefix = "symphony"', "[coordinator]", "count = 2", f"epoch_s = {epoch_s}", "lease_s = 1.5",
             "heartbeat_ttl_s = 1.5", "[coordinator.autoscale]", "enabled = true", "min_slots = 1",
             "target_utilization = 0.7", f"cold_start_s = {cold_start_s}", f"down_cooldown_s = {down_cooldown_s}",
             f"down_window_s = {down_window_s}",
             "[[models]]", f'name = "{MODEL}"', f'kind = "{KIND}"', f"slo_ms = {SLO_MS}", "batch_size_max = 32"]
    for k in range(slots):
        lines += ["[[agents]]", f'id = "agent-{k}"', f'slots = [{{id = "s{k}", models = ["{MODEL}"]}}]']
    lines += ["[[shards]]", 'id = "shard-0"']
    return "\n".join(lines) + "\n"


def step_times(steps: list[tuple[float, float]], seed: int = 5) -> np.ndarray:
    """Poisson arrival times (s from start) for consecutive (rate, seconds) steps."""
    rng = np.random.default_rng(seed)
    times, start = [], 0.0
    for rate, seconds in steps:
        n = rng.poisson(rate * seconds)
        times.append(start + np.sort(rng.uniform(0.0, seconds, n)))
        start += seconds
    return np.concatenate(times)


def steps_of(high_rps: float, low_rps: float, step_s: float, cycles: int) -> list[tuple[float, float]]:
    """high, low, high, low, ... ending high: `cycles` scale-downs and as many scale-ups."""
    steps = [(high_rps, step_s)]
    for _ in range(cycles):
        steps += [(low_rps, step_s), (high_rps, step_s)]
    return steps


async def run_steps(steps: list[tuple[float, float]], *, workdir: Path, cold_start_s: float = 1.0,
                    epoch_s: float = 1.0, start_timeout_s: float = 90.0) -> dict:
    """Start the cluster with the actuator, send the steps, stop everything; the summary."""
    config = workdir / "cluster.toml"
    config.write_text(cluster_toml(epoch_s=epoch_s, cold_start_s=cold_start_s))
    cluster = LocalCluster(config, log_dir=workdir / "logs", autoscale=True)
    await cluster.start(timeout_s=start_timeout_s)
    actuator = asyncio.create_task(cluster.run_actuator(cold_start_s=cold_start_s))
    try:
        times = step_times(steps)
        started = time.monotonic()
        result = await send_schedule(cluster.url, times, [f"symphony.infer.{MODEL}"] * len(times),
                                     [BODY] * len(times), slo_ms=[SLO_MS] * len(times), drain_s=5.0, ledger=True)
        if actuator.done():
            actuator.result()  # the actuator failed: say why
    finally:
        actuator.cancel()
        await asyncio.wait([actuator])  # its connection closes before the loop does
        cluster.stop()
    return summarise(steps, result, [(t - started, s) for t, s in cluster.decisions], cold_start_s, epoch_s)


def summarise(steps: list[tuple[float, float]], result: SendResult, decisions: list, cold_start_s: float,
              epoch_s: float) -> dict:
    """The ledger's counts, the decisions as a time series, and per step how the slots followed."""
    replies = result.replies if result.replies is not None else (result.status != 0).astype(int)
    series = [{"t_s": round(t, 3), "target": s.target_slots, "need": round(s.need_slots, 3),
               "active": len(s.active), "starting": len(s.starting), "draining": len(s.draining),
               "released": len(s.released), "reason": s.reason} for t, s in decisions]
    statuses = dict(zip(*(v.tolist() for v in np.unique(result.status, return_counts=True)), strict=True))
    return {
        "steps": [{"rps": r, "seconds": s} for r, s in steps],
        "cold_start_s": cold_start_s, "epoch_s": epoch_s,
        "requests": len(result.status),
        "unanswered": int(np.count_nonzero(replies == 0)),
        "duplicates": int(result.duplicates),
        "statuses": {str(k): v for k, v in statuses.items()},
        "per_step": follow_times(steps, series),
        "series": series,
    }


def follow_times(steps: list[tuple[float, float]], series: list[dict]) -> list[dict]:
    """Per step: the highest and lowest target and active slots within it, the slots it ended
    at, and how long after it began the target and the active slots first reached that final
    target."""
    rows, start = [], 0.0
    for rate, seconds in steps:
        inside = [p for p in series if start <= p["t_s"] < start + seconds]
        row: dict = {"rps": rate, "start_s": start}
        if inside:
            final = inside[-1]["target"]
            row |= {"target_final": final, "active_final": inside[-1]["active"],
                    "target_reached_s": _first(inside, "target", final, start),
                    "active_reached_s": _first(inside, "active", final, start)}
        rows.append(row)
        start += seconds
    return rows


def _first(points: list[dict], key: str, value: int, start: float) -> float | None:
    return next((round(p["t_s"] - start, 2) for p in points if p[key] == value), None)


def plot(summary: dict, path: Path) -> None:
    from load.plots import finish, plt

    fig, ax = plt.subplots(figsize=(9, 4))
    series = summary["series"]
    t = [p["t_s"] for p in series]
    for key, style in (("target", "--"), ("active", "-"), ("draining", ":")):
        ax.step(t, [p[key] for p in series], style, where="post", label=f"{key} slots")
    rate_ax = ax.twinx()
    edges, rates, start = [], [], 0.0
    for step in summary["steps"]:
        edges += [start, start + step["seconds"]]
        rates += [step["rps"], step["rps"]]
        start += step["seconds"]
    rate_ax.plot(edges, rates, color="grey", alpha=0.5, label="offered req/s")
    rate_ax.set_ylabel("offered req/s")
    ax.set_xlabel("s since the load started")
    ax.set_ylabel("slots")
    ax.set_title(f"live autoscaling, steps: {summary['requests']} requests, {summary['unanswered']} unanswered, "
                 f"{summary['duplicates']} duplicates", fontsize=9)
    finish(fig, path, ax, legend={"loc": "upper left"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--high-rps", type=float, default=400.0)
    parser.add_argument("--low-rps", type=float, default=100.0)
    parser.add_argument("--step-s", type=float, default=30.0)
    parser.add_argument("--cycles", type=int, default=3, help="scale-downs (each followed by a scale-up)")
    parser.add_argument("--cold-start", type=float, default=2.0)
    parser.add_argument("--epoch-s", type=float, default=1.0)
    parser.add_argument("--out", default="results/autoscale_live")
    args = parser.parse_args(argv)
    if min(args.high_rps, args.low_rps, args.step_s) <= 0 or args.cycles < 1 or args.cold_start < 0:
        parser.error("rates and --step-s must be > 0, --cycles >= 1, --cold-start >= 0")
    steps = steps_of(args.high_rps, args.low_rps, args.step_s, args.cycles)
    with tempfile.TemporaryDirectory(prefix="symphony-autoscale-") as workdir:
        summary = asyncio.run(run_steps(steps, workdir=Path(workdir), cold_start_s=args.cold_start,
                                        epoch_s=args.epoch_s))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    plot(summary, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in summary.items() if k != "series"}, indent=1))
    return 0 if summary["unanswered"] == 0 and summary["duplicates"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
