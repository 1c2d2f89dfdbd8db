"""Partitioning and load-proportional slots (issue 6), in simulation.

1. Capacity with models and slots split across 1, 2, 4 and 8 shards by the coordinator's
   algorithm, against one shard owning everything (target: at most 5% loss at 4 shards on
   many-model), with each slot-quota rule side by side (delay-aware and proportional).
2. GPU use tracks load: on `steps` (rate high -> quarter -> high), with two shards and a
   coordinator epoch of 5 s, busy slots and the desired-slots signal per epoch against the
   slots the offered load needs.

    python -m load.bench.partitioning [--workload many-model] [--shards 1,2,4,8]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load.bound import analytic_bound
from load.plots import finish, plt
from load.sim.kernel import SimOptions, simulate
from load.sim.search import capacity
from load.workload import load_workload


def _capacity(workload: str, shards: int, policy: str, quotas: str) -> dict:
    result = capacity(load_workload(workload), policy, SimOptions(shards=shards, quotas=quotas),
                      progress=lambda m: print(f"[{shards} shards, {quotas}] {m}", file=sys.stderr, flush=True))
    return {"shards": shards, "quotas": quotas, "capacity_scale": result.capacity_scale,
            "of_bound": result.fraction_of_bound, "worst_model_bad_rate": result.worst_model_bad_rate}


def tracking(scale: float, epoch_s: float, shards: int, out: Path) -> dict:
    loaded = load_workload("steps")
    run = simulate(loaded, "symphony-plus", SimOptions(scale=scale, shards=shards, epoch_s=epoch_s))
    bound = analytic_bound(loaded, loaded.workload.slots)
    costs = {m.name: m.cost_s_per_request for m in bound.models}
    # Slots the offered load needs at each moment (bench segments, by the bound's cost).
    def needed(t_s: float) -> float:
        total = 0.0
        for model in loaded.workload.models:
            at = 0.0
            for segment in [*model.warmup, *model.bench, *model.cooldown]:
                if at <= t_s < at + segment.seconds:
                    total += segment.rps * scale * costs[model.name]
                    break
                at += segment.seconds
        return total

    samples = [{"t_s": e.at_ns / 1e9, "desired": e.desired_slots, "busy": e.busy_slots,
                "needed": needed(e.at_ns / 1e9 - epoch_s / 2)} for e in run.epochs]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    ts = [s["t_s"] for s in samples]
    ax.step(ts, [s["busy"] for s in samples], where="pre", label="busy slots (previous epoch)")
    ax.step(ts, [s["desired"] for s in samples], where="post", label="desired slots (coordinator)")
    ax.step(ts, [s["needed"] for s in samples], where="pre", linestyle=":", label="needed by the offered load")
    ax.axhline(loaded.workload.slots, color="k", linewidth=0.8, label="slots")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("slots")
    ax.set_title(f"steps at scale {scale:g}: {shards} shards, epoch {epoch_s:g} s")
    finish(fig, out / "tracking.png", ax, legend={})
    return {"scale": scale, "epoch_s": epoch_s, "shards": shards, "samples": samples,
            "bad_rate": sum(1 for o in run.outcome if o != 1) / len(run.outcome)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="many-model")
    parser.add_argument("--shards", default="1,2,4,8")
    parser.add_argument("--policy", default="symphony-plus")
    parser.add_argument("--quotas", default="delay,demand", help="slot quota rules to compare side by side")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/bench-partitioning")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = [int(s) for s in args.shards.split(",")]
    rules = args.quotas.split(",")
    runs = [(n, q) for q in rules for n in counts if n > 1 or q == rules[0]]  # one shard: no quotas
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(_capacity, [args.workload] * len(runs), [n for n, _ in runs],
                             [args.policy] * len(runs), [q for _, q in runs]))
    base = next(r for r in rows if r["shards"] == 1)["capacity_scale"] if 1 in counts else None
    for r in rows:
        r["vs_one_shard"] = r["capacity_scale"] / base if base else None
        if r["shards"] == 1:
            r["quotas"] = "-"
    track = tracking(scale=2.5, epoch_s=5.0, shards=2, out=out)
    (out / "results.json").write_text(json.dumps({"capacity": rows, "tracking": track}, indent=1))
    print("| shards | slot quotas | capacity scale | of bound | vs 1 shard | worst model @cap |\n"
          "|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["shards"], r["quotas"])):
        vs = f"{r['vs_one_shard']:.3f}" if r["vs_one_shard"] else "-"
        print(f"| {r['shards']} | {r['quotas']} | {r['capacity_scale']:.3f} | {r['of_bound']:.3f} | "
              f"{vs} | {r['worst_model_bad_rate']:.2%} |")
    print("\nt (s) | busy | desired | needed")
    for s in track["samples"]:
        print(f"{s['t_s']:5.0f} | {s['busy']:5.2f} | {s['desired']:3d} | {s['needed']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
