"""The scheduling core's cost at two revisions, side by side in one run (a refactor's "the core
stays within 5%" check).

    python -m load.bench.core_cost_ab --before 9957fc2 [--after WORKTREE] [--rounds 6] [--replays 20]

`--before` is checked out into a temporary git worktree; `--after` is a folder (default: this
tree, uncommitted changes included). Each round runs one child process per tree, order
alternating; a child records the events a simulation hands the core (load/bench/core_cost.py)
for the two standard cases and replays them `--replays` times into fresh policies. Printed per
case: the recorded event counts (equal when the two cores take the same decisions) and the
fastest and median replay, before and after, with their ratios. On a shared machine the fastest
replay is the stable figure; the median shows the noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs inside each tree (its own load/ and shard/ on sys.path via cwd).
CHILD = """
import gc, json, statistics, sys, time
from load.bench.core_cost import _Recorder, wide_workload
from load.bound import analytic_bound
from load.schedule import build_schedule
from load.sim.kernel import SimOptions, model_configs, run_policy
from load.workload import load_workload
from shard.core.policies import make_policy

def case(loaded, scale, replays):
    options = SimOptions(scale=scale)
    models = model_configs(loaded, scale)
    schedule = build_schedule(loaded.workload, scale=scale)
    recorder = _Recorder(make_policy("symphony", models, options.core))
    run = run_policy(recorder, models, loaded.workload.slots, schedule, options)
    times = []
    for _ in range(replays):
        handle = make_policy("symphony", models, options.core).handle
        gc.collect(); gc.freeze()
        started = time.process_time()
        for event, now_ns in recorder.events:
            handle(event, now_ns)
        times.append(time.process_time() - started)
        gc.unfreeze()
    return {"requests": len(run.outcome), "events": len(recorder.events), "times_s": times}

replays = int(sys.argv[1])
example = load_workload("example")
half = 0.5 * analytic_bound(example, example.workload.slots).bound_scale
print(json.dumps({
    "8 slots / 2 models": case(example, half, replays),
    "1024 slots / 500 models": case(wide_workload(500, 1024, seconds=1.0), 1.0, max(1, replays // 5)),
}))
"""


def _run_child(tree: Path, replays: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(replays)], cwd=tree, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(samples: dict[str, dict[str, list[float]]], counts: dict[str, dict[str, tuple[int, int]]]) -> None:
    print("\n| case | events before / after | fastest replay before / after (ms) | ratio | "
          "median before / after (ms) | ratio |\n|---|---|---|---|---|---|")
    for label in samples["before"]:
        b, a = samples["before"][label], samples["after"][label]
        eb, ea = counts["before"][label], counts["after"][label]
        same = "same" if eb == ea else "DIFFER"
        print(f"| {label} | {eb[1]:,} / {ea[1]:,} ({same}) | {min(b) * 1e3:,.1f} / {min(a) * 1e3:,.1f} | "
              f"{min(b) / min(a):.3f} | {statistics.median(b) * 1e3:,.1f} / {statistics.median(a) * 1e3:,.1f} | "
              f"{statistics.median(b) / statistics.median(a):.3f} |")
    print("\nratio: before time / after time (above 1: the after core is faster).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a git revision of this repository")
    parser.add_argument("--after", type=Path, default=ROOT, help="a folder holding the other tree")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--replays", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="core-ab-") as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), args.before],
                       check=True)
        try:
            trees = {"before": before, "after": args.after}
            samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
            counts: dict[str, dict[str, tuple[int, int]]] = {"before": {}, "after": {}}
            for i in range(args.rounds):
                for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
                    for label, result in _run_child(trees[name], args.replays).items():
                        samples[name].setdefault(label, []).extend(result["times_s"])
                        counts[name][label] = (result["requests"], result["events"])
                        print(f"[round {i + 1}/{args.rounds}] {name:6} {label}: fastest "
                              f"{min(result['times_s']) * 1e3:,.1f} ms of {len(result['times_s'])}", flush=True)
            _report(samples, counts)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
