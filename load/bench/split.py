"""A hot model split across shards, in simulation (issue 14), side by side in one run.

1. Split capacity: the `hot` workload (one model, 16 slots) on one shard that owns every slot,
   against the same model split over 2 and 4 shards (`--shard-rps-max` low enough that every
   probe of the capacity search splits it that many ways), each shard its own policy on its
   share; capacity = the largest scale within 1% bad rate. Target: split over 4 >= 0.95 of one.
2. Fleet: 100 shards x 10 slots and 300 models whose rates are log-normal, the hottest well over
   one shard's budget, at half the analytic bound: which models split and how many ways, bad
   rate, goodput, and the simulator's own speed.

    python -m load.bench.split [--policies symphony-plus,symphony] [--jobs 2] [--out results/bench-split]
        [--fleet-shards 100] [--fleet-slots 1000] [--fleet-models 300] [--skip-fleet] [--skip-split]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from load.bound import analytic_bound
from load.sim.records import SimOptions
from load.sim.search import capacity, run_report
from load.workload import load_workload

WAYS = [1, 2, 4]
FLEET_BUDGET_RPS = 4000.0  # [coordinator] shard_rps_max's default
FLEET_PROFILES = ["sleep:1082,5204", "sleep:500,5000", "sleep:2000,8000", "sleep:200,2000"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def split_capacity(policy: str, ways: int) -> dict:
    """Capacity of `hot` on one shard (ways 1) or split `ways` ways: a budget so low that every
    probe splits it to the cap, which is the shard count."""
    loaded = load_workload("hot")
    options = SimOptions(shards=ways, shard_rps_max=1.0) if ways > 1 else SimOptions()
    started = time.monotonic()
    result = capacity(loaded, policy, options)
    check = run_report(loaded, policy, SimOptions(scale=result.capacity_scale, shards=ways,
                                                  shard_rps_max=1.0 if ways > 1 else 0.0))
    _log(f"split {policy} x{ways}: capacity {result.capacity_scale:.3f} ({time.monotonic() - started:.0f} s)")
    return {"policy": policy, "ways": ways, "capacity_scale": result.capacity_scale,
            "goodput_rps": result.goodput_rps, "model_shards": check.model_shards["ranker"],
            "bad_rate_at_capacity": check.bad_rate}


def fleet_toml(models: int, slots: int, seed: int) -> str:
    """`models` models on `slots` slots, rates log-normal (sigma 1.5) scaled so that the whole
    asks about half the slots at each model's best batch; the result is checked against the bound."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0.0, 1.5) for _ in range(models)]
    lines = [f'description = "fleet: {models} models, log-normal rates, on {slots} slots"', f"seed = {seed}",
             f"slots = {slots}"]
    per_slot_rps = 700.0  # about half what a slot serves at these profiles' large batches
    total = per_slot_rps * slots
    for i, weight in enumerate(weights):
        rate = max(1.0, total * weight / sum(weights))
        lines += ["[[models]]", f'name = "m{i}"', f'profile = "{FLEET_PROFILES[i % len(FLEET_PROFILES)]}"',
                  f"slo_ms = {rng.choice([50, 100, 200])}", "batch_size_max = 64",
                  f"warmup = [{{rps = {rate:.1f}, seconds = 1}}]", f"bench = [{{rps = {rate:.1f}, seconds = 2}}]",
                  f"cooldown = [{{rps = {rate:.1f}, seconds = 0.5}}]"]
    return "\n".join(lines) + "\n"


def fleet(policy: str, shards: int, slots: int, models: int, out: Path,
          budget_rps: float = FLEET_BUDGET_RPS) -> dict:
    """The fleet at half the bound, hot models split by `budget_rps` (0: none split, every model
    on one shard, which the simulator allows since it does not model a shard's CPU)."""
    path = out / "fleet.toml"
    path.write_text(fleet_toml(models, slots, seed=14))
    loaded = load_workload(str(path))
    bound = analytic_bound(loaded, slots)
    scale = min(1.0, 0.5 * bound.bound_scale)
    started = time.process_time()
    report = run_report(loaded, policy, SimOptions(scale=scale, shards=shards, shard_rps_max=budget_rps),
                        timing=True)
    cpu_s = time.process_time() - started
    rates = {m.name: m.bench_mean_rps * scale for m in loaded.workload.models}
    split = {name: ways for name, ways in report.model_shards.items() if ways > 1}
    _log(f"fleet {policy} budget {budget_rps:.0f}: {len(split)} models split, bad rate {report.bad_rate:.4%}, "
         f"{cpu_s:.0f} s CPU")
    return {"policy": policy, "budget_rps": budget_rps, "shards": shards, "slots": slots, "models": models,
            "scale": scale,
            "bound_scale": bound.bound_scale, "offered_rps": sum(rates.values()), "goodput_rps": report.goodput_rps,
            "bad_rate": report.bad_rate,
            "split": {n: {"ways": w, "rate_rps": rates[n]} for n, w in sorted(split.items())},
            "hottest_rps": max(rates.values()), "over_budget": sum(r > budget_rps for r in rates.values()),
            "requests": report.total.offered, "sim_cpu_s": cpu_s,
            "sim_requests_per_cpu_s": report.total.offered / cpu_s if cpu_s else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", default="symphony-plus,symphony")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/bench-split")
    parser.add_argument("--fleet-shards", type=int, default=100)
    parser.add_argument("--fleet-slots", type=int, default=1000)
    parser.add_argument("--fleet-models", type=int, default=300)
    parser.add_argument("--skip-fleet", action="store_true")
    parser.add_argument("--skip-split", action="store_true", help="only the fleet")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    cases = [] if args.skip_split else [(p, w) for p in policies for w in WAYS]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        fleets = [] if args.skip_fleet else [
            pool.submit(fleet, policies[0], args.fleet_shards, args.fleet_slots, args.fleet_models, out, budget)
            for budget in (FLEET_BUDGET_RPS, 0.0)]
        rows = list(pool.map(split_capacity, *zip(*cases, strict=True))) if cases else []
        fleet_rows = [f.result() for f in fleets]
    (out / "results.json").write_text(json.dumps({"split": rows, "fleet": fleet_rows}, indent=1))
    print_split(rows)
    for row in fleet_rows:
        print_fleet(row)
    return 0


def print_split(rows: list[dict]) -> None:
    print("| policy | shards serving `ranker` | capacity scale | x one shard | goodput (req/s) | bad rate there |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        one = next(r for r in rows if r["policy"] == row["policy"] and r["ways"] == 1)
        print(f"| {row['policy']} | {row['model_shards']} | {row['capacity_scale']:.3f} | "
              f"{row['capacity_scale'] / one['capacity_scale']:.3f} | {row['goodput_rps']:,.0f} | "
              f"{row['bad_rate_at_capacity']:.3%} |")


def print_fleet(row: dict) -> None:
    ways = sorted(v["ways"] for v in row["split"].values())
    print(f"\nfleet, budget {row['budget_rps']:,.0f} req/s: {row['shards']} shards x "
          f"{row['slots'] // row['shards']} slots, {row['models']} models, {row['offered_rps']:,.0f} req/s offered "
          f"at scale {row['scale']:.3f} (bound {row['bound_scale']:.3f}); hottest {row['hottest_rps']:,.0f} req/s; "
          f"{len(ways)} models split ({ways} ways); goodput {row['goodput_rps']:,.0f} req/s, bad rate "
          f"{row['bad_rate']:.4%}; simulated {row['requests']:,} requests in {row['sim_cpu_s']:.0f} CPU-s "
          f"({row['sim_requests_per_cpu_s']:,.0f}/s)")


if __name__ == "__main__":
    sys.exit(main())
