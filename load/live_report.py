"""Figures, plots and a Markdown report for a live load run; `compare` puts two runs side by side."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from load.generator import OUTCOMES, Plan, SlotsSample, classify
from load.plots import finish, plt
from load.sender import SendResult


def summarize(plan: Plan, result: SendResult, slots: list[SlotsSample], config: dict, *,
              lag_limit_ms: float = 5.0) -> dict:
    slo_s = np.array(plan.slo_ms)[plan.model_index] / 1000
    outcome = classify(result.status, result.latency_s, slo_s)
    models = []
    goodput = 0.0
    in_any_window = np.zeros(len(plan.times_s), dtype=bool)
    for i, name in enumerate(plan.model_names):
        start, end = plan.bench_start_s[i], plan.bench_end_s[i]
        mask = (plan.model_index == i) & (plan.times_s >= start) & (plan.times_s < end)
        in_any_window |= mask
        counts = {o: int(np.count_nonzero(outcome[mask] == k)) for k, o in enumerate(OUTCOMES)}
        replied_ok = mask & (result.status == 200)
        latencies_ms = result.latency_s[replied_ok] * 1000
        everything_ms = np.where(result.status[mask] == 200, result.latency_s[mask] * 1000, np.inf)
        p99_all = _p99_counting_failures(everything_ms)
        model_goodput = counts["ok"] / (end - start) if end > start else 0.0
        goodput += model_goodput
        offered = int(np.count_nonzero(mask))
        models.append({
            "model": name, "slo_ms": plan.slo_ms[i], "offered": offered, **counts,
            "goodput_rps": model_goodput, "bad_rate": 1 - counts["ok"] / offered if offered else 0.0,
            "latency_ms": percentiles(latencies_ms),
            "mean_batch": float(result.batch_size[replied_ok].mean()) if replied_ok.any() else 0.0,
            "mlperf_p99_ms": p99_all, "mlperf_valid": bool(p99_all <= plan.slo_ms[i]),
        })
    totals = {o: sum(m[o] for m in models) for o in OUTCOMES}
    offered = sum(m["offered"] for m in models)
    lag_ms = result.lag_s * 1000
    lag = {"p50": float(np.nanpercentile(lag_ms, 50)), "p99": float(np.nanpercentile(lag_ms, 99)),
           "max": float(np.nanmax(lag_ms))}
    n = len(plan.times_s)
    return {
        "config": config,
        "models": models,
        "total": {"offered": offered, **totals, "goodput_rps": goodput,
                  "bad_rate": 1 - totals["ok"] / offered if offered else 0.0},
        "generator": {
            "requests": n, "lag_ms": lag, "fell_behind": lag["p99"] > lag_limit_ms, "lag_limit_ms": lag_limit_ms,
            "cpu_us_per_request": result.extra.get("send_cpu_s", 0.0) / n * 1e6 if n else 0.0,
            "duplicates": result.duplicates,
        },
        "mlperf_valid": all(m["mlperf_valid"] for m in models),
        "timeseries": _timeseries(plan, result, outcome),
        "slots": [[s.t_s, s.busy, s.owned, s.busy_seconds] for s in slots],
    }


def _p99_counting_failures(everything_ms: np.ndarray) -> float:
    """p99 with every request without a 200 counted as infinitely late (MLPerf's rule). When the
    99th percentile falls between two of those, numpy's interpolation computes inf - inf: that is
    an infinite p99, not an error (it was one under load: a warning the tests turn into a failure)."""
    if not everything_ms.size:
        return float("inf")
    with np.errstate(invalid="ignore"):
        p99 = float(np.percentile(everything_ms, 99))
    return float("inf") if np.isnan(p99) else p99


def percentiles(values_ms: np.ndarray) -> dict:
    if values_ms.size == 0:
        return {}
    return {f"p{p:g}": float(np.percentile(values_ms, p)) for p in (50, 90, 99, 99.9)}


def _timeseries(plan: Plan, result: SendResult, outcome: np.ndarray) -> dict:
    end = float(plan.times_s.max()) if len(plan.times_s) else 0.0
    bins = np.arange(0, np.ceil(end) + 1)
    offered, _ = np.histogram(plan.times_s, bins)
    ok, _ = np.histogram(plan.times_s[outcome == OUTCOMES.index("ok")], bins)
    return {"t_s": bins[:-1].tolist(), "offered_rps": offered.tolist(), "goodput_rps": ok.tolist()}


def write_outputs(summary: dict, plan: Plan, result: SendResult, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    _plot_cdf(plan, result, out / "latency-cdf.png")
    _plot_over_time(summary, out / "goodput-over-time.png")
    _plot_batches(result, out / "batch-sizes.png")
    _plot_slots(summary, out / "slots-in-use.png")
    report = format_report(summary)
    (out / "report.md").write_text(report + "\n\n![latency CDF](latency-cdf.png)\n\n"
                                   "![goodput over time](goodput-over-time.png)\n\n"
                                   "![batch sizes](batch-sizes.png)\n\n![slots in use](slots-in-use.png)\n")
    return report


def format_report(summary: dict) -> str:
    config = summary["config"]
    gen = summary["generator"]
    lines = [f"# Load run: {config.get('source', '')}", "",
             f"scale {config.get('scale', 1):.3g}, seed {config.get('seed')}, senders {config.get('senders')}, "
             f"{config.get('content_type')}, NATS {config.get('nats_url')}", ""]
    if gen["fell_behind"]:
        lines += [f"**The generator fell behind** (lag p99 {gen['lag_ms']['p99']:.1f} ms > "
                  f"{gen['lag_limit_ms']:g} ms): the offered load was lower and burstier than asked; "
                  "use more `--senders`.", ""]
    lines += ["| model | SLO ms | offered | ok | late | dropped | rejected | error | no reply | goodput/s | "
              "p50 ms | p99 ms | mean batch | MLPerf p99 |", "|---" * 14 + "|"]
    for m in summary["models"]:
        lat = m["latency_ms"]
        lines.append(
            f"| {m['model']} | {m['slo_ms']:g} | {m['offered']} | {m['ok']} | {m['late']} | {m['dropped']} | "
            f"{m['rejected']} | {m['error']} | {m['noreply']} | {m['goodput_rps']:.1f} | "
            f"{lat.get('p50', float('nan')):.1f} | "
            f"{lat.get('p99', float('nan')):.1f} | {m['mean_batch']:.1f} | "
            f"{'VALID' if m['mlperf_valid'] else 'INVALID'} ({m['mlperf_p99_ms']:.1f}) |")
    t = summary["total"]
    lines += ["", f"total: offered {t['offered']}, goodput {t['goodput_rps']:.1f}/s, bad rate {t['bad_rate']:.2%}; "
              f"generator lag p50/p99/max {gen['lag_ms']['p50']:.2f}/{gen['lag_ms']['p99']:.2f}/"
              f"{gen['lag_ms']['max']:.2f} ms, {gen['cpu_us_per_request']:.1f} us CPU per request sent, "
              f"duplicates {gen['duplicates']}; MLPerf Server rule (p99 <= SLO, every model): "
              f"{'VALID' if summary['mlperf_valid'] else 'INVALID'}"]
    return "\n".join(lines)


def _plot_cdf(plan: Plan, result: SendResult, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, name in enumerate(plan.model_names):
        lat = np.sort(result.latency_s[(plan.model_index == i) & (result.status == 200)] * 1000)
        if lat.size:
            ax.plot(lat, np.arange(1, lat.size + 1) / lat.size, label=f"{name} (SLO {plan.slo_ms[i]:g} ms)")
            ax.axvline(plan.slo_ms[i], color=ax.lines[-1].get_color(), linestyle=":", linewidth=1)
    ax.set_xlabel("latency (ms), replies 200")
    ax.set_ylabel("fraction")
    ax.set_title("latency CDF per model (dotted: SLO)")
    finish(fig, path, ax, legend={})


def _plot_over_time(summary: dict, path: Path) -> None:
    ts = summary["timeseries"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(ts["t_s"], ts["offered_rps"], label="offered")
    ax.plot(ts["t_s"], ts["goodput_rps"], label="goodput (ok within SLO)")
    ax.set_xlabel("time (s, by send time)")
    ax.set_ylabel("requests / s")
    finish(fig, path, ax, legend={})


def _plot_batches(result: SendResult, path: Path) -> None:
    sizes = result.batch_size[result.status == 200]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if sizes.size:
        ax.hist(sizes, bins=min(60, int(sizes.max()) or 1), weights=1.0 / np.maximum(sizes, 1))
    ax.set_xlabel("batch size")
    ax.set_ylabel("batches")
    ax.set_title("batch sizes (from reply headers)")
    finish(fig, path)


def _plot_slots(summary: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(summary["slots"]) > 1:
        t, _busy, owned, busy_s = (np.array(c) for c in zip(*summary["slots"], strict=True))
        in_use = np.diff(busy_s) / np.maximum(np.diff(t), 1e-9)
        ax.step(t[1:], in_use, where="pre", label="slots in use (busy slot-s per s)")
        ax.step(t, owned, where="post", label="slots owned", linestyle="--")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("slots")
    finish(fig, path, ax, legend={})


def compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    lines = [f"| model | goodput {names[0]} | goodput {names[1]} | ratio | p99 {names[0]} | p99 {names[1]} | "
             f"bad {names[0]} | bad {names[1]} |", "|---" * 8 + "|"]
    by_b = {m["model"]: m for m in b["models"]}
    for m in a["models"]:
        other = by_b.get(m["model"])
        if other is None:
            continue
        ratio = other["goodput_rps"] / m["goodput_rps"] if m["goodput_rps"] else float("nan")
        lines.append(f"| {m['model']} | {m['goodput_rps']:.1f} | {other['goodput_rps']:.1f} | {ratio:.3f} | "
                     f"{m['latency_ms'].get('p99', float('nan')):.1f} | "
                     f"{other['latency_ms'].get('p99', float('nan')):.1f} | "
                     f"{m['bad_rate']:.2%} | {other['bad_rate']:.2%} |")
    ta, tb = a["total"], b["total"]
    lines.append(f"| TOTAL | {ta['goodput_rps']:.1f} | {tb['goodput_rps']:.1f} | "
                 f"{tb['goodput_rps'] / ta['goodput_rps'] if ta['goodput_rps'] else float('nan'):.3f} | | | "
                 f"{ta['bad_rate']:.2%} | {tb['bad_rate']:.2%} |")
    return "\n".join(lines)
