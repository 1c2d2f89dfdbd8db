"""The soak's figures from its ledger and epoch log: a summary (JSON and text) and soak.png,
goodput per second per model with a marker at every epoch written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from load.generator import OUTCOMES, classify
from load.plots import finish, plt

LAG_P99_MS_MAX = 5.0  # load/live_report.py's limit: a sender later than this fell behind


def _counts(status: np.ndarray, outcome: np.ndarray, latency_ms: np.ndarray, slo_ms: float | None) -> dict:
    """Sent, 200 within SLO (and its fraction), 200 late, other statuses by code, unanswered."""
    sent = int(len(status))
    ok = int(np.count_nonzero(outcome == OUTCOMES.index("ok")))
    others = status[(status != 200) & (status != 0)]
    codes, counts = np.unique(others, return_counts=True)
    done = latency_ms[status == 200]
    row = {"sent": sent, "ok_in_slo": ok, "ok_in_slo_fraction": ok / sent if sent else None,
           "ok_late": int(np.count_nonzero(outcome == OUTCOMES.index("late"))),
           "statuses": {str(int(c)): int(n) for c, n in zip(codes, counts, strict=True)},
           "unanswered": int(np.count_nonzero(status == 0)),
           "latency_ms": {f"p{p:g}": float(np.percentile(done, p)) for p in (50, 99, 99.9)} if done.size else {}}
    if slo_ms is not None:
        row["slo_ms"] = slo_ms
    return row


def summarize(ledger: dict[str, np.ndarray], models: list[str], slo_ms: list[float], duplicates: int) -> dict:
    """Request figures overall and per model; latency is the ledger's (reply minus actual send)."""
    index = ledger["model_index"]
    status = ledger["status"]
    latency_s = ledger["latency_s"].astype(np.float64)
    outcome = classify(status, latency_s, np.asarray(slo_ms, dtype=np.float64)[index] / 1000)
    latency_ms = latency_s * 1000
    per_model = {m: _counts(status[index == i], outcome[index == i], latency_ms[index == i], slo_ms[i])
                 for i, m in enumerate(models)}
    lag_ms = ledger["lag_s"].astype(np.float64) * 1000
    lag = {"p99": float(np.nanpercentile(lag_ms, 99)), "max": float(np.nanmax(lag_ms))} if lag_ms.size else {}
    return {"requests": {**_counts(status, outcome, latency_ms, None), "duplicates": duplicates},
            "models": per_model,
            "sender": {"lag_ms": lag, "fell_behind": bool(lag and lag["p99"] > LAG_P99_MS_MAX),
                       "lag_limit_ms": LAG_P99_MS_MAX}}


def format_summary(summary: dict) -> str:
    """The summary as the CLI prints it: one line per model, then the totals and the epochs."""
    r = summary["requests"]
    e = summary["epochs"]
    lines = [f"{'model':<14}{'rate/s':>8}{'sent':>9}{'200 in SLO':>12}{'fraction':>10}{'late':>7}"
             f"{'other':>18}{'no reply':>10}{'p99 ms':>8}{'SLO ms':>8}"]
    for model, m in summary["models"].items():
        fraction = "-" if m["ok_in_slo_fraction"] is None else f"{m['ok_in_slo_fraction']:.3%}"
        others = ",".join(f"{c}:{n}" for c, n in m["statuses"].items()) or "-"
        lines.append(f"{model:<14}{summary['rates_rps'].get(model, 0.0):>8.1f}{m['sent']:>9}{m['ok_in_slo']:>12}"
                     f"{fraction:>10}{m['ok_late']:>7}{others:>18}{m['unanswered']:>10}"
                     f"{m['latency_ms'].get('p99', float('nan')):>8.1f}{m['slo_ms']:>8g}")
    fraction = "-" if r["ok_in_slo_fraction"] is None else f"{r['ok_in_slo_fraction']:.3%}"
    lag = summary["sender"]["lag_ms"]
    lines += [
        f"requests: sent {r['sent']}, 200 within SLO {r['ok_in_slo']} ({fraction}), 200 late {r['ok_late']}, "
        f"other statuses {r['statuses'] or '{}'}, unanswered {r['unanswered']}, duplicates {r['duplicates']}",
        f"sender lag p99 {lag.get('p99', 0.0):.2f} ms, max {lag.get('max', 0.0):.1f} ms; "
        f"bench peak memory {summary['bench_rss_mb_max']:.0f} MB"
        + (" (FELL BEHIND: the offered load was lower than asked)" if summary["sender"]["fell_behind"] else ""),
        f"epochs: written {e['written']} (last epoch {e['last_epoch']}), models moved {e['models_moved']}, "
        f"slots moved {e['slots_moved']}, empty assignments {e['empty_assignments']}"
        + (f", undecodable {e['undecodable']}" if e["undecodable"] else "")
        + (f", epochs not going up {e['epoch_not_up']}" if e["epoch_not_up"] else "")
        + (f"; WATCH ENDED: {e['watch_ended']}" if e["watch_ended"] else ""),
        f"rates: {summary['rates_note']}",
    ]
    lines += [f"  move at {m['t_s']:.1f} s, epoch {m['epoch']}: {m['moved']}" for m in e["moves"]]
    return "\n".join(lines)


def plot_soak(ledger: dict[str, np.ndarray], models: list[str], slo_ms: list[float], epochs: list[dict],
              seconds: float, path: Path) -> None:
    """Goodput (200 within SLO, by send second) per model; a dotted line at each epoch written,
    a black dashed one where it moved a model, a thick black one for an empty assignment. The style is
    load/live_report.py's."""
    fig, ax = plt.subplots(figsize=(10, 4))
    bins = np.arange(0.0, np.ceil(max(seconds, 1.0)) + 1)
    index = ledger["model_index"]
    good = classify(ledger["status"], ledger["latency_s"].astype(np.float64),
                    np.asarray(slo_ms, dtype=np.float64)[index] / 1000) == OUTCOMES.index("ok")
    for i, model in enumerate(models):
        if not np.any(index == i):
            continue  # idle soak (`--rate-scale 0`): only the epochs
        counts, _ = np.histogram(ledger["sent_s"][good & (index == i)], bins)
        ax.plot(bins[:-1], counts, label=f"{model} (SLO {slo_ms[i]:g} ms)", linewidth=1)
    markers = {"epoch written": ({"color": "gray", "linestyle": ":", "linewidth": 0.8}, "written"),
               "epoch that moved a model": ({"color": "black", "linestyle": "--", "linewidth": 1.2}, "moved"),
               "empty assignment": ({"color": "black", "linestyle": "-", "linewidth": 2.0}, "empty")}
    for label, (style, kind) in markers.items():
        times = [r["t_s"] for r in epochs if not r["initial"] and _epoch_kind(r) == kind]
        for k, t in enumerate(times):
            ax.axvline(t, label=label if k == 0 else None, **style)
    ax.set_xlim(0, bins[-1])
    ax.set_ylim(0, max(ax.get_ylim()[1], 10.0))
    ax.set_xlabel("time since the soak started (s, by send time)")
    ax.set_yscale("symlog", linthresh=10)  # the models' rates differ 30-fold; zero stays drawable
    ax.set_ylabel("goodput (200 within SLO per s)")
    ax.set_title("soak: goodput per model and the epochs written")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    finish(fig, path)


def _epoch_kind(record: dict) -> str:
    return "empty" if record["empty"] else "moved" if record["moved"] else "written"
