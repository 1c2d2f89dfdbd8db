"""Symphony+ ablation and sensitivity: each mechanism on its own and together, then one
parameter at a time around the tuned values, as capacity at the 1% bad-rate limit on every
built-in workload. Tuning uses the built-in workloads only.

    python -m load.bench.tune_plus [--workloads ...] [--jobs 2] [--out results/tune-plus]
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import msgspec

from load.sim.kernel import SimOptions
from load.sim.search import capacity
from load.workload import load_workload
from shard.core.config import CoreConfig
from shard.core.policies import PLUS

MS = 1_000_000
OFF = {"drop_beta": 1.0, "early_dispatch": False, "reserve_horizon_ns": 0}


def variants() -> dict[str, dict]:
    plus = dict(PLUS)
    table: dict[str, dict] = {
        "faithful": dict(OFF),
        "beta only": {**OFF, "drop_beta": plus["drop_beta"]},
        "early only (no reservation)": {**plus, "drop_beta": 1.0, "reserve_horizon_ns": 0},
        "early + reservation": {**plus, "drop_beta": 1.0},
        "beta + early (no reservation)": {**plus, "reserve_horizon_ns": 0},
        "all three (symphony-plus)": dict(plus),
    }
    for beta in (0.4, 0.5, 0.7, 0.8):
        table[f"beta {beta}"] = {**plus, "drop_beta": beta}
    for util in (0.6, 0.7, 0.9):
        table[f"utilization >= {util}"] = {**plus, "early_utilization_min": util}
    for slack in (0.0, 0.05, 0.2, 0.4):
        table[f"cost slack {slack}"] = {**plus, "early_cost_slack": slack}
    for horizon_ms in (1, 6, 10):
        table[f"horizon {horizon_ms} ms"] = {**plus, "reserve_horizon_ns": horizon_ms * MS}
    return table


def _one(workload: str, label: str, overrides: dict) -> dict:
    loaded = load_workload(workload)
    options = SimOptions(core=msgspec.structs.replace(CoreConfig(), **overrides))
    result = capacity(loaded, "symphony", options)
    print(f"[tune] {workload} {label}: {result.capacity_scale:.3f} ({result.fraction_of_bound:.3f} of bound), "
          f"worst model {result.worst_model_bad_rate:.2%}", file=sys.stderr, flush=True)
    return {"workload": workload, "variant": label, "overrides": overrides,
            "capacity_scale": result.capacity_scale, "of_bound": result.fraction_of_bound,
            "worst_model_bad_rate": result.worst_model_bad_rate}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="example,many-model,bursty")
    parser.add_argument("--variants", default="", help="comma-separated labels (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="results/tune-plus")
    args = parser.parse_args(argv)
    table = variants()
    chosen = [v for v in args.variants.split(",") if v] or list(table)
    workloads = [w for w in args.workloads.split(",") if w]
    jobs = [(w, label) for label in chosen for w in workloads]
    jobs.sort(key=lambda j: j[0] != "many-model")
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(_one, *zip(*[(w, label, table[label]) for w, label in jobs], strict=True)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = ["| variant | " + " | ".join(workloads) + " |", "|---|" + "---|" * len(workloads)]
    for label in chosen:
        cells = []
        for w in workloads:
            row = next(r for r in rows if r["workload"] == w and r["variant"] == label)
            cells.append(f"{row['capacity_scale']:.3f} ({row['of_bound']:.3f}; "
                         f"worst {row['worst_model_bad_rate']:.1%})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
