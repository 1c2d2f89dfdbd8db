"""A hot model split across shards, in simulation (issue 14), side by side in one run.

1. Split capacity: the `hot` workload (one model, 16 slots) on one shard that owns every slot,
   against the same model split over 2 and 4 shards (`--shard-rps-max` low enough that every
   probe of the capacity search splits it that many ways), each shard its own policy on its
   share; capacity = the largest scale within 1% bad rate. Target: split over 4 >= 0.95 of one.
2. Fleet: 100 shards x 10 slots and 300 models whose rates are log-normal, the hottest well over
   one shard's budget, at half the analytic bound: which models split and how many ways, bad
   rate, goodput, and the simulator's own speed.

    python -m load.bench.split [--policies symphony-plus,symphony] [--jobs 2] [--out results/bench-split]
        [--fleet-shards 100] [--fleet-slots 1000] [--fleet-models 300] [--skip-fleet]
"""

from __future__ import annotations

import argparse
import json
import math
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


def fleet(policy: str, shards: int, slots: int, models: int, out: Path) -> dict:
    path = out / "fleet.toml"
    path.write_text(fleet_toml(models, slots, seed=14))
    loaded = load_workload(str(path))
    bound = analytic_bound(loaded, slots)
    scale = min(1.0, 0.5 * bound.bound_scale)
    started = time.process_time()
    report = run_report(loaded, policy, SimOptions(scale=scale, shards=shards, shard_rps_max=FLEET_BUDGET_RPS),
                        timing=True)
    cpu_s = time.process_time() - started
    rates = {m.name: m.bench_mean_rps * scale for m in loaded.workload.models}
    split = {name: ways for name, ways in report.model_shards.items() if ways > 1}
    _log(f"fleet {policy}: {len(split)} models split, bad rate {report.bad_rate:.4%}, {cpu_s:.0f} s CPU")
    return {"policy": policy, "shards": shards, "slots": slots, "models": models, "scale": scale,
            "bound_scale": bound.bound_scale, "offered_rps": sum(rates.values()), "goodput_rps": report.goodput_rps,
            "bad_rate": report.bad_rate,
            "split": {n: {"ways": w, "rate_rps": rates[n]} for n, w in sorted(split.items())},
            "hottest_rps": max(rates.values()), "over_budget": sum(r > FLEET_BUDGET_RPS for r in rates.values()),
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
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policies = args.policies.split(",")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        fleet_future = None if args.skip_fleet else pool.submit(
            fleet, policies[0], args.fleet_shards, args.fleet_slots, args.fleet_models, out)
        rows = list(pool.map(split_capacity, *zip(*[(p, w) for p in policies for w in WAYS], strict=True)))
        fleet_row = fleet_future.result() if fleet_future else None
    (out / "results.json").write_text(json.dumps({"split": rows, "fleet": fleet_row}, indent=1))
    print("| policy | shards serving `ranker` | capacity scale | x one shard | goodput (req/s) | bad rate there |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        one = next(r for r in rows if r["policy"] == row["policy"] and r["ways"] == 1)
        print(f"| {row['policy']} | {row['model_shards']} | {row['capacity_scale']:.3f} | "
              f"{row['capacity_scale'] / one['capacity_scale']:.3f} | {row['goodput_rps']:,.0f} | "
              f"{row['bad_rate_at_capacity']:.3%} |")
    if fleet_row:
        ways = sorted(v["ways"] for v in fleet_row["split"].values())
        print(f"\nfleet: {fleet_row['shards']} shards x {fleet_row['slots'] // fleet_row['shards']} slots, "
              f"{fleet_row['models']} models, {fleet_row['offered_rps']:,.0f} req/s offered at scale "
              f"{fleet_row['scale']:.3f} (bound {fleet_row['bound_scale']:.3f}); "
              f"{fleet_row['over_budget']} models over "
              f"{FLEET_BUDGET_RPS:,.0f} req/s (hottest {fleet_row['hottest_rps']:,.0f}) split {ways} ways; "
              f"goodput {fleet_row['goodput_rps']:,.0f} req/s, bad rate {fleet_row['bad_rate']:.4%}; "
              f"simulated {fleet_row['requests']:,} requests in {fleet_row['sim_cpu_s']:.0f} CPU-s "
              f"({fleet_row['sim_requests_per_cpu_s']:,.0f}/s)")
    return 0 if math.isfinite(rows[0]["capacity_scale"]) else 1


if __name__ == "__main__":
    sys.exit(main())
