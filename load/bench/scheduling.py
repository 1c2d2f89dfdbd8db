"""The scheduling benchmark: every policy side by side on the built-in workloads.

For each workload and policy: capacity at the bad-rate limit (and as a fraction of the bound and
of eager's), min-slots where the bound needs 75% of the workload's slots, goodput at 0.5x, 1.0x,
1.25x and 1.5x the bound scale, busy slots at half the bound scale against needed slots; then
the core's cost in simulated requests per CPU-second at 8 slots / 2 models and 1024 slots /
500 models, measured alternately in the same run. Writes JSON, a Markdown report and plots.

    python -m load.bench.scheduling [--workloads example,many-model,bursty] [--policies ...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from load.bench.core_cost import CoreCost, measure, wide_workload
from load.bound import analytic_bound
from load.sim.kernel import SimOptions
from load.sim.search import capacity, min_slots, run_report
from load.workload import load_workload
from shard.core.policies import POLICIES

LOAD_POINTS = (0.5, 1.0, 1.25, 1.5)


class LoadPoint(msgspec.Struct, kw_only=True):
    of_bound: float
    scale: float
    goodput_rps: float
    bad_rate: float
    worst_model_bad_rate: float
    busy_slots: float
    needed_slots: float
    mean_batch_size: float


class PolicyResult(msgspec.Struct, kw_only=True):
    workload: str
    policy: str
    capacity_scale: float
    capacity_of_bound: float
    capacity_goodput_rps: float
    capacity_worst_model_bad_rate: float
    min_slots: int | None
    min_slots_bound: int
    min_slots_scale: float
    points: list[LoadPoint]
    seconds: float


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def bench_policy(workload: str, policy: str, max_bad_rate: float) -> PolicyResult:
    started = time.time()
    loaded = load_workload(workload)
    slots = loaded.workload.slots
    bound = analytic_bound(loaded, slots)
    cap = capacity(loaded, policy, max_bad_rate=max_bad_rate, progress=_progress)
    scale = 0.75 * bound.bound_scale
    mins = min_slots(loaded, policy, SimOptions(scale=scale), max_bad_rate=max_bad_rate, progress=_progress)
    points = []
    for of_bound in LOAD_POINTS:
        report = run_report(loaded, policy, SimOptions(scale=of_bound * bound.bound_scale))
        points.append(LoadPoint(
            of_bound=of_bound, scale=report.scale, goodput_rps=report.goodput_rps, bad_rate=report.bad_rate,
            worst_model_bad_rate=report.worst_model_bad_rate, busy_slots=report.busy_slots,
            needed_slots=report.needed_slots, mean_batch_size=report.mean_batch_size,
        ))
        _progress(f"[{workload} {policy}] {of_bound}x bound: goodput {report.goodput_rps:.0f}/s, "
                  f"bad {report.bad_rate:.2%}, busy {report.busy_slots:.2f} of needed {report.needed_slots:.2f}")
    return PolicyResult(
        workload=workload, policy=policy, capacity_scale=cap.capacity_scale,
        capacity_of_bound=cap.fraction_of_bound, capacity_goodput_rps=cap.goodput_rps,
        capacity_worst_model_bad_rate=cap.worst_model_bad_rate, min_slots=mins.min_slots,
        min_slots_bound=mins.bound_slots, min_slots_scale=scale, points=points,
        seconds=time.time() - started,
    )


def core_costs(rounds: int) -> list[CoreCost]:
    """Alternate the two sizes `rounds` times and keep each one's best (least disturbed) run."""
    example = load_workload("example")
    half = 0.5 * analytic_bound(example, example.workload.slots).bound_scale
    wide = wide_workload(500, 1024, seconds=1.0)
    best: dict[str, CoreCost] = {}
    for i in range(rounds):
        for label, loaded, scale in (("8 slots / 2 models", example, half), ("1024 slots / 500 models", wide, 1.0)):
            cost = measure(loaded, "symphony", label, scale=scale)
            _progress(f"[core cost] round {i + 1}: {label}: {cost.core_requests_per_cpu_s:,.0f} req/CPU-s core, "
                      f"{cost.sim_requests_per_cpu_s:,.0f} whole simulation")
            if label not in best or cost.core_us_per_request < best[label].core_us_per_request:
                best[label] = cost
    return list(best.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="example,many-model,bursty")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--max-bad-rate", type=float, default=0.01)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--core-rounds", type=int, default=3)
    parser.add_argument("--out", default="results/bench-scheduling")
    args = parser.parse_args(argv)
    workloads = [w for w in args.workloads.split(",") if w]
    policies = [p for p in args.policies.split(",") if p]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(w, p) for w in workloads for p in policies]
    # Slow searches first so the pool stays busy to the end.
    slow = ("clockwork", "shepherd", "shepherd-fixed", "eager")
    jobs.sort(key=lambda job: (job[1] not in slow, job[0] != "many-model"))
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(bench_policy, w, p, args.max_bad_rate): (w, p) for w, p in jobs}
        results = []
        for future in futures:
            results.append(future.result())
            _progress(f"done: {futures[future]}")
    costs = core_costs(args.core_rounds) if args.core_rounds else []
    payload = {
        "max_bad_rate": args.max_bad_rate,
        "results": [msgspec.to_builtins(r) for r in results],
        "core_costs": [msgspec.to_builtins(c) for c in costs],
        "bounds": {w: msgspec.to_builtins(analytic_bound(load_workload(w), load_workload(w).workload.slots))
                   for w in workloads},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    from load.bench.report import write_report

    report = write_report(payload, out)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
