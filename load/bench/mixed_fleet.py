"""Mixed fleets (issue 16): every policy's capacity with each slot planned on its own class's
profile (`per_slot`) and with the slowest profile (`slowest`, the reference's planning), side by
side on the same seeds, as a fraction of the mixed fleet's analytic bound.

    python -m load.bench.mixed_fleet [--workload mixed] [--seeds 42,1,2,3,4] [--jobs 2]
        [--policies symphony-plus,symphony,...] [--tolerance 0.0025] [--out results/mixed_fleet]

Capacity is the largest rate scale with a bad rate <= 1%, bisected to `tolerance` x the bound.
Printed: per policy and mode, the capacity per seed and its mean, the fraction of the bound, and
the ratios the issue asks for: symphony-plus per-slot over slowest, and over every baseline.
Writes JSON and a bar plot (mean capacity per policy and mode, each seed a dot).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from load.plots import finish, plt
from load.sim.kernel import SimOptions
from load.sim.search import capacity
from load.workload import load_workload
from shard.core.config import CoreConfig, SlotProfiles
from shard.core.policies import POLICIES

MODES = ("per_slot", "slowest")


class Probe(msgspec.Struct, frozen=True):
    policy: str
    mode: str
    seed: int
    capacity_scale: float
    bound_scale: float
    slot_mix: str


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def measure(workload: str, policy: str, mode: str, seed: int, tolerance: float) -> Probe:
    loaded = load_workload(workload)
    options = SimOptions(seed=seed, core=CoreConfig(slot_profiles=SlotProfiles(mode)))
    result = capacity(loaded, policy, options, tolerance=tolerance)
    _progress(f"[{policy} {mode} seed {seed}] capacity {result.capacity_scale:.3f} "
              f"({result.fraction_of_bound:.3f} of bound {result.bound_scale:.3f})")
    return Probe(policy, mode, seed, result.capacity_scale, result.bound_scale, result.slot_mix)


def _mean(probes: list[Probe], policy: str, mode: str) -> float:
    return statistics.fmean(p.capacity_scale for p in probes if p.policy == policy and p.mode == mode)


def report(probes: list[Probe], policies: list[str]) -> list[str]:
    """The table and the issue's ratios, as printed lines."""
    seeds = sorted({p.seed for p in probes})
    bound = probes[0].bound_scale
    lines = [f"mixed fleet {probes[0].slot_mix}: bound scale {bound:.3f}; capacity per seed {seeds}", "",
             f"{'policy':16}{'mode':10}{'mean':>8}{'of bound':>10}  per seed"]
    for policy in policies:
        for mode in MODES:
            mine = sorted((p for p in probes if p.policy == policy and p.mode == mode), key=lambda p: p.seed)
            if not mine:
                continue
            mean = _mean(probes, policy, mode)
            lines.append(f"{policy:16}{mode:10}{mean:8.3f}{mean / bound:10.3f}  "
                         + " ".join(f"{p.capacity_scale:.3f}" for p in mine))
    plus = "symphony-plus"
    if any(p.policy == plus for p in probes):
        per_slot = _mean(probes, plus, "per_slot")
        lines += ["", f"symphony-plus per-slot / slowest: {per_slot / _mean(probes, plus, 'slowest'):.3f} "
                  f"(target >= 1.15); of the mixed bound: {per_slot / bound:.3f} (target >= 0.93)"]
        for policy in policies:
            if policy != plus and any(p.policy == policy and p.mode == "per_slot" for p in probes):
                lines.append(f"  vs {policy} per-slot: {per_slot / _mean(probes, policy, 'per_slot'):.3f}")
    return lines


def plot(probes: list[Probe], policies: list[str], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.38
    for k, mode in enumerate(MODES):
        xs = [i + (k - 0.5) * width for i in range(len(policies))]
        ax.bar(xs, [_mean(probes, p, mode) for p in policies], width, label=mode, alpha=0.8)
        for x, policy in zip(xs, policies, strict=True):
            seeds = [p.capacity_scale for p in probes if p.policy == policy and p.mode == mode]
            ax.plot([x] * len(seeds), seeds, "k.", markersize=3)
    ax.axhline(probes[0].bound_scale, color="k", linestyle="--", linewidth=1, label="mixed bound")
    ax.set_xticks(range(len(policies)), policies, rotation=20, fontsize=8)
    ax.set_ylabel("capacity (rate scale, bad rate <= 1%)")
    ax.set_title(f"mixed fleet {probes[0].slot_mix}: each slot's own profile vs the slowest")
    finish(fig, path, ax, legend={})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="mixed")
    parser.add_argument("--seeds", default="42,1,2,3,4")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--tolerance", type=float, default=0.0025)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/mixed_fleet")
    args = parser.parse_args(argv)
    policies = args.policies.split(",")
    jobs = [(args.workload, p, m, int(s), args.tolerance) for p in policies for m in MODES
            for s in args.seeds.split(",")]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        probes = list(pool.map(measure, *zip(*jobs, strict=True)))
    lines = report(probes, policies)
    print("\n".join(lines))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(msgspec.to_builtins(probes), indent=1) + "\n")
    plot(probes, policies, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
