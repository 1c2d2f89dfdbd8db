"""Markdown tables and plots for the scheduling benchmark's results."""

from __future__ import annotations

from pathlib import Path

from load.plots import finish, plt

BASELINES = ("eager", "triton", "clockwork", "shepherd", "shepherd-fixed", "nexus", "nexus-warm")
OURS = ("symphony", "symphony-plus")


def _by(results: list[dict], workload: str) -> dict[str, dict]:
    return {r["policy"]: r for r in results if r["workload"] == workload}


def _point(result: dict, of_bound: float) -> dict:
    return next(p for p in result["points"] if p["of_bound"] == of_bound)


def workload_table(results: list[dict], workload: str, bound: dict) -> list[str]:
    rows = _by(results, workload)
    eager = rows.get("eager")
    best_baseline = max((rows[p]["capacity_scale"] for p in BASELINES if p in rows), default=0.0)
    lines = [
        f"### {workload}  (bound_scale {bound['bound_scale']:.3f}; min-slots at 0.75x bound)",
        "",
        "| policy | capacity scale | of bound | vs eager | vs best baseline | worst model bad @cap "
        "| min slots (bound) | vs eager | goodput 1.0x | 1.25x | 1.5x | busy / needed @0.5x |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, r in rows.items():
        vs_eager = r["capacity_scale"] / eager["capacity_scale"] if eager and eager["capacity_scale"] else float("nan")
        vs_best = r["capacity_scale"] / best_baseline if best_baseline else float("nan")
        slots = "-" if r["min_slots"] is None else str(r["min_slots"])
        slots_vs = (f"{r['min_slots'] / eager['min_slots']:.2f}" if eager and eager["min_slots"] and r["min_slots"]
                    else "-")
        half = _point(r, 0.5)
        lines.append(
            f"| {policy} | {r['capacity_scale']:.3f} | {r['capacity_of_bound']:.3f} | {vs_eager:.3f} | "
            f"{vs_best:.3f} | {r['capacity_worst_model_bad_rate']:.2%} | {slots} ({r['min_slots_bound']}) | "
            f"{slots_vs} | {_point(r, 1.0)['goodput_rps']:.0f} | {_point(r, 1.25)['goodput_rps']:.0f} | "
            f"{_point(r, 1.5)['goodput_rps']:.0f} | {half['busy_slots']:.2f} / {half['needed_slots']:.2f} |"
        )
    return lines


def target_lines(results: list[dict], workload: str, policy: str) -> list[str]:
    rows = _by(results, workload)
    if policy not in rows:
        return []
    r = rows[policy]
    lines = [f"- **{policy} on {workload}**"]
    half = _point(r, 0.5)
    ratio = half["busy_slots"] / half["needed_slots"]
    lines.append(f"  - load-proportional: busy_slots {half['busy_slots']:.2f} = {ratio:.3f}x needed_slots "
                 f"({'met' if abs(ratio - 1) <= 0.15 else 'missed'}: within 15%)")
    for of_bound in (1.0, 1.25, 1.5):
        mine = _point(r, of_bound)["goodput_rps"]
        others = {p: _point(rows[p], of_bound)["goodput_rps"] for p in ("eager", "clockwork") if p in rows}
        parts = ", ".join(f"{mine / v:.3f}x {p}" for p, v in others.items() if v)
        lines.append(f"  - goodput at {of_bound}x bound: {mine:.0f}/s ({parts})")
    best = max((rows[p]["capacity_scale"] for p in BASELINES if p in rows), default=0.0)
    if best:
        lines.append(f"  - capacity: {r['capacity_scale'] / best:.3f}x the best baseline, "
                     f"{r['capacity_of_bound']:.3f} of the bound")
    return lines


def plot_goodput(results: list[dict], workload: str, path: Path) -> None:
    rows = _by(results, workload)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for policy, r in rows.items():
        xs = [p["of_bound"] for p in r["points"]]
        ys = [p["goodput_rps"] for p in r["points"]]
        style = "-o" if policy in OURS else "--."
        ax.plot(xs, ys, style, label=policy, linewidth=2 if policy in OURS else 1)
    offered = [p["scale"] for p in next(iter(rows.values()))["points"]]
    ax.set_xlabel("offered load (x bound scale)")
    ax.set_ylabel("goodput (requests within SLO per s)")
    ax.set_title(f"{workload}: goodput vs offered load (scales {offered[0]:.2f}..{offered[-1]:.2f})")
    finish(fig, path, ax, legend={"ncol": 2})


def plot_busy(results: list[dict], workloads: list[str], path: Path) -> None:
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.5 * len(workloads), 4), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        rows = _by(results, workload)
        names = list(rows)
        busy = [_point(rows[p], 0.5)["busy_slots"] for p in names]
        needed = _point(rows[names[0]], 0.5)["needed_slots"]
        ax.bar(range(len(names)), busy, color=["tab:orange" if p in OURS else "tab:gray" for p in names])
        ax.axhline(needed, color="k", linestyle="--", label=f"needed_slots {needed:.2f}")
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{workload}: busy slots at 0.5x bound")
        ax.legend(fontsize=8)
    finish(fig, path)


def write_report(payload: dict, out: Path) -> str:
    results = payload["results"]
    workloads = list(dict.fromkeys(r["workload"] for r in results))
    lines = [f"## Scheduling benchmark (bad-rate limit {payload['max_bad_rate']:.0%})", ""]
    for workload in workloads:
        lines += workload_table(results, workload, payload["bounds"][workload]) + [""]
        plot_goodput(results, workload, out / f"goodput-{workload}.png")
        lines.append(f"![goodput {workload}](goodput-{workload}.png)")
        lines.append("")
    if workloads:
        plot_busy(results, workloads, out / "busy-slots.png")
        lines += ["![busy slots](busy-slots.png)", ""]
    lines.append("### Targets")
    for policy in OURS:
        for workload in workloads:
            lines += target_lines(results, workload, policy)
    if payload.get("core_costs"):
        lines += ["", "### Core cost (best of alternating rounds)", "",
                  "| case | requests | core req/CPU-s | core us/request | whole sim req/CPU-s |",
                  "|---|---|---|---|---|"]
        for c in payload["core_costs"]:
            lines.append(f"| {c['label']} | {c['requests']} | {c['core_requests_per_cpu_s']:,.0f} | "
                         f"{c['core_us_per_request']:.2f} | {c['sim_requests_per_cpu_s']:,.0f} |")
        if len(payload["core_costs"]) == 2:
            a, b = payload["core_costs"]
            lines.append(f"\nper-request cost ratio 1024/500 vs 8/2: "
                         f"{b['core_us_per_request'] / a['core_us_per_request']:.2f}x")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text
