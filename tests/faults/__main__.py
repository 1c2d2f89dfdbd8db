"""The fault-injection suite, long form: every fault at 50% and 80% of capacity, longer runs, a
table (markdown + JSON) and goodput-over-time plots under results/faults/.

    python -m tests.faults                       # all faults, loads 0.5 and 0.8, 16 s runs
    python -m tests.faults --faults shard-stop,nats-kill --loads 0.8 --seconds 12
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import msgspec

from tests.faults.harness import BIN_S, FAULTS, FaultReport, capacity_rps, run_fault


def table(reports: list[FaultReport]) -> str:
    rows = ["| fault | load | sent | 200 | 503 | 504 | 429 | dup | unanswered (where) | detect s | recover s "
            "| expired device s | not run (expired) | withheld plans | KV live | pass |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        o = r.outcomes
        where = f"{r.unanswered} ({r.unanswered_where})" if r.unanswered else "0"
        rows.append(f"| {r.fault} | {r.load:.0%} | {r.sent} | {o.get('200', 0)} | {o.get('503', 0)} | "
                    f"{o.get('504', 0)} | {o.get('429', 0)} | {r.duplicates} | {where} | {_opt(r.detect_s)} | "
                    f"{_opt(r.recover_s)} | {r.expired_device_s:.2f} | {r.expired_not_run} | {r.withheld_plans} | "
                    f"{'yes' if r.kv_members_live else 'NO'} | "
                    f"{'yes' if r.passed else 'NO: ' + '; '.join(r.problems)} |")
    return "\n".join(rows)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(reports: list[FaultReport], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r.fault for r in reports))
    cols = 3
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names, strict=False):  # the grid may have spare axes
        for r in (r for r in reports if r.fault == name):
            ax.plot([k * BIN_S for k in range(len(r.goodput_bins))], r.goodput_bins, label=f"{r.load:.0%}")
            ax.axvspan(r.fault_at_s, max(r.heal_at_s, r.fault_at_s + 0.1), color="red", alpha=0.08)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0][0].legend(title="load", fontsize=7)
    fig.supxlabel("send time (s); shaded: fault active")
    fig.supylabel("goodput (ok within SLO / sent)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(FAULTS))
    parser.add_argument("--loads", default="0.5,0.8")
    parser.add_argument("--seconds", type=float, default=16.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default="results/faults")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fault_at, heal_at = args.seconds * 0.3, args.seconds * 0.3 + 3.0
    print(f"capacity (analytic bound) {capacity_rps():.0f} req/s; fault at {fault_at:.1f} s, healed at {heal_at:.1f} s")
    reports: list[FaultReport] = []
    jobs = [(f, float(load)) for f in args.faults.split(",") for load in args.loads.split(",")]
    for k, (name, load) in enumerate(jobs, 1):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="symphony-fault-") as tmp:
            report = await run_fault(FAULTS[name], load=load, seconds=args.seconds, fault_at_s=fault_at,
                                     heal_at_s=heal_at, tmp=Path(tmp), seed=args.seed)
        reports.append(report)
        print(f"[{k}/{len(jobs)}] {name} @ {load:.0%}: {report.outcomes} dup={report.duplicates} "
              f"unanswered={report.unanswered} detect={report.detect_s} recover={report.recover_s} "
              f"{'PASS' if report.passed else 'FAIL ' + '; '.join(report.problems)} "
              f"({time.monotonic() - started:.0f} s)", flush=True)
        (out / "report.json").write_bytes(msgspec.json.format(msgspec.json.encode(reports)))
    (out / "report.md").write_text(table(reports) + "\n")
    plot(reports, out / "goodput.png")
    print(table(reports))
    print(f"wrote {out}/report.md, report.json, goodput.png")


if __name__ == "__main__":
    asyncio.run(main())
