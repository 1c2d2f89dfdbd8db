"""GPUs that follow the load (issue 13), side by side in one run.

1. Consolidation: at 0.5x the bound on every built-in workload, each policy with slot choice
   `preferred` (ours) and `earliest` (round robin): slots under 5% busy, and capacity both ways.
2. Autoscaled diurnal day (`diurnal`, load 0.15 -> 0.8 -> 0.15 of the pool, 20 s cold start):
   symphony-plus, symphony, eager and triton under our demand rule and under the HPA rule;
   GPU-seconds against the oracle's, bad rate, goodput.
3. Eager with the best fixed pool for each phase of the day: fixed pools of 4, 6, ..., 16 slots
   run over the whole day, and for each phase the smallest pool whose bad rate stays within 1%.

    python -m load.bench.autoscale [--jobs 2] [--out results/bench-autoscale] [--skip-capacity]
        [--workloads example,many-model,bursty,steps] [--policies ...] [--day diurnal] [--skip-consolidation]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from coordinator.autoscale import AutoscaleConfig
from load.bound import analytic_bound
from load.sim.autoscale import AutoscaleResult, simulate_autoscale
from load.sim.autoscale_report import format_summary, plot_runs
from load.sim.records import SimOptions
from load.sim.search import capacity, run_report
from load.workload import load_workload
from shard.core.config import CoreConfig, SlotChoice

WORKLOADS = ["example", "many-model", "bursty", "steps"]
POLICIES = ["symphony-plus", "symphony", "eager", "triton"]
PHASES = 6
MAX_BAD_RATE = 0.01


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def consolidation_row(workload: str, policy: str, choice: str, with_capacity: bool) -> dict:
    loaded = load_workload(workload)
    core = CoreConfig(slot_choice=SlotChoice(choice))
    bound = analytic_bound(loaded, loaded.workload.slots, core)
    report = run_report(loaded, policy, SimOptions(scale=0.5 * bound.bound_scale, core=core))
    idle = sum(f < 0.05 for f in report.slot_busy_fractions)
    row = {"workload": workload, "policy": policy, "slot_choice": choice, "slots": report.slots,
           "idle_slots": idle, "idle_fraction": idle / report.slots, "bad_rate": report.bad_rate,
           "busy_fractions": [round(f, 3) for f in report.slot_busy_fractions]}
    if with_capacity:
        row["capacity_scale"] = capacity(loaded, policy, SimOptions(core=core)).capacity_scale
    _log(f"consolidation {workload} {policy} {choice}: {idle}/{report.slots} idle")
    return row


def autoscaled(workload: str, policy: str, rule: str, fixed: int, cold_start_s: float) -> AutoscaleResult:
    config = AutoscaleConfig(rule="demand" if rule == "fixed" else rule, cold_start_s=cold_start_s)
    result = simulate_autoscale(load_workload(workload), policy, config, fixed_slots=fixed)
    _log(format_summary(result))
    return result


def best_fixed_per_phase(runs: list[AutoscaleResult]) -> dict:
    """For each phase of the day, the smallest fixed pool whose bad rate there is within 1%."""
    bench_s = runs[0].bench_s
    phases = []
    for p in range(PHASES):
        lo, hi = p * bench_s / PHASES, (p + 1) * bench_s / PHASES
        best = None
        for run in sorted(runs, key=lambda r: r.fixed_slots):
            inside = [s for s in run.samples if lo < s.t_s <= hi]
            offered = sum(s.offered_rps for s in inside)
            bad = sum(s.bad_rate * s.offered_rps for s in inside) / offered if offered else 0.0
            if bad <= MAX_BAD_RATE:
                best = (run.fixed_slots, bad)
                break
        fallback = max(runs, key=lambda r: r.fixed_slots).fixed_slots
        phases.append({"from_s": lo, "to_s": hi, "slots": best[0] if best else fallback, "met": best is not None,
                       "bad_rate": best[1] if best else None})
    gpu_s = sum((ph["to_s"] - ph["from_s"]) * ph["slots"] for ph in phases)
    return {"phases": phases, "gpu_seconds": gpu_s, "all_met": all(ph["met"] for ph in phases)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cold-start-s", type=float, default=20.0)
    parser.add_argument("--skip-capacity", action="store_true", help="consolidation without capacity searches")
    parser.add_argument("--skip-consolidation", action="store_true", help="only the autoscaled day")
    parser.add_argument("--out", default="results/bench-autoscale")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="for consolidation")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--day", default="diurnal", help="the workload autoscaled")
    args = parser.parse_args(argv)
    workloads, policies = args.workloads.split(","), args.policies.split(",")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = [] if args.skip_consolidation else [
        (w, p, c) for w in workloads for p in policies for c in ("preferred", "earliest")]
    pool_size = load_workload(args.day).workload.slots
    runs = [(p, r, 0) for p in policies for r in ("demand", "hpa")] + [
        ("eager", "fixed", k) for k in range(4, pool_size + 1, 2)]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        scaled_futures = [pool.submit(autoscaled, args.day, p, r, k, args.cold_start_s) for p, r, k in runs]
        consolidation = list(pool.map(consolidation_row, *zip(*cases, strict=True),
                                      [not args.skip_capacity] * len(cases))) if cases else []
        results = [f.result() for f in scaled_futures]
    scaled = [r for r in results if r.rule != "fixed"]
    fixed = best_fixed_per_phase([r for r in results if r.rule == "fixed"])
    plot_runs(scaled, out / "autoscale.png")
    (out / "results.json").write_text(json.dumps({
        "consolidation": consolidation, "fixed_per_phase": fixed,
        "autoscaled": [msgspec.to_builtins(r) for r in results]}, indent=1))
    print_tables(consolidation, scaled, fixed, workloads, policies)
    return 0


def print_tables(consolidation: list[dict], scaled: list[AutoscaleResult], fixed: dict, workloads: list[str],
                 policies: list[str]) -> None:
    print("| workload | policy | idle slots (<5% busy) preferred | earliest | capacity preferred | earliest | ratio |")
    print("|---|---|---|---|---|---|---|")
    for w in workloads if consolidation else []:
        for p in policies:
            pref, early = (next(r for r in consolidation if (r["workload"], r["policy"], r["slot_choice"]) == (w, p, c))
                           for c in ("preferred", "earliest"))
            cap = "- | - | -"
            if "capacity_scale" in pref:
                cap = (f"{pref['capacity_scale']:.3f} | {early['capacity_scale']:.3f} | "
                       f"{pref['capacity_scale'] / early['capacity_scale']:.3f}")
            idle = f"{pref['idle_slots']}/{pref['slots']} | {early['idle_slots']}/{early['slots']}"
            print(f"| {w} | {p} | {idle} | {cap} |")
    eager_hpa = next(r for r in scaled if (r.policy, r.rule) == ("eager", "hpa"))
    print("\n| policy | rule | GPU-s | x oracle | vs eager+HPA | bad rate | goodput/s | ups | downs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in scaled:
        print(f"| {r.policy} | {r.rule} | {r.gpu_seconds:.0f} | {r.gpu_vs_oracle:.3f} | "
              f"{r.gpu_seconds / eager_hpa.gpu_seconds:.3f} | {r.bad_rate:.3%} | {r.goodput_rps:.1f} | "
              f"{r.scale_ups} | {r.scale_downs} |")
    oracle = scaled[0].oracle_gpu_seconds
    print(f"| eager | best fixed pool per phase | {fixed['gpu_seconds']:.0f} | {fixed['gpu_seconds'] / oracle:.3f} | "
          f"{fixed['gpu_seconds'] / eager_hpa.gpu_seconds:.3f} | each phase <= 1%: {fixed['all_met']} | | | |")
    print("phases (eager, fixed): " + ", ".join(
        f"{ph['from_s']:.0f}-{ph['to_s']:.0f}s: {ph['slots']}{'' if ph['met'] else ' (not met)'}"
        for ph in fixed["phases"]))


if __name__ == "__main__":
    sys.exit(main())
