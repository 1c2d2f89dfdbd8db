"""How an autoscaled run reads: one summary line per run, the time series as a table, and a plot
of the slots held against the oracle's, with the busy slots and the bad rate."""

from __future__ import annotations

from pathlib import Path

from load.plots import finish, plt
from load.sim.autoscale import AutoscaleResult


def format_summary(result: AutoscaleResult) -> str:
    rule = f"fixed {result.fixed_slots}" if result.rule == "fixed" else result.rule
    return (f"{result.policy:<14} {rule:<9} GPU-s {result.gpu_seconds:8.0f}  oracle {result.oracle_gpu_seconds:8.0f}"
            f"  x{result.gpu_vs_oracle:5.3f}  bad {result.bad_rate:7.3%}  goodput {result.goodput_rps:8.1f}/s"
            f"  mean slots {result.mean_active_slots:5.2f}  ups {result.scale_ups} downs {result.scale_downs}")


def format_series(result: AutoscaleResult, every: int = 1) -> str:
    lines = [f"{'t_s':>7}{'active':>8}{'start':>7}{'drain':>7}{'target':>8}{'busy':>7}{'needed':>8}"
             f"{'oracle':>8}{'offered/s':>11}{'bad':>8}  reason"]
    for s in result.samples[::every]:
        lines.append(f"{s.t_s:7.0f}{s.active:8d}{s.starting:7d}{s.draining:7d}{s.target:8d}{s.busy_slots:7.2f}"
                     f"{s.needed_slots:8.2f}{s.oracle_slots:8d}{s.offered_rps:11.0f}{s.bad_rate:8.2%}  {s.reason}")
    return "\n".join(lines)


def plot_runs(results: list[AutoscaleResult], path: Path | str) -> None:
    """One panel per run: slots held (serving + starting + draining) and serving, the oracle's
    slots, the busy slots; the bad rate on a second axis."""
    fig, axes = plt.subplots(len(results), 1, figsize=(10, 2.6 * len(results)), sharex=True, squeeze=False)
    for ax, result in zip(axes[:, 0], results, strict=True):
        t = [s.t_s for s in result.samples]
        ax.step(t, [s.active + s.starting + s.draining for s in result.samples], where="post", label="held (GPU cost)")
        ax.step(t, [s.active for s in result.samples], where="post", label="serving", alpha=0.7)
        ax.step(t, [s.oracle_slots for s in result.samples], where="post", label="oracle", linestyle="--")
        ax.plot(t, [s.busy_slots for s in result.samples], label="busy", color="tab:purple", alpha=0.6, linewidth=0.8)
        rule = f"fixed {result.fixed_slots}" if result.rule == "fixed" else f"{result.rule} rule"
        ax.set_title(f"{result.policy}, {rule}: {result.gpu_seconds:.0f} GPU-s = x{result.gpu_vs_oracle:.2f} oracle, "
                     f"bad {result.bad_rate:.2%}", fontsize=9)
        ax.set_ylabel("slots")
        bad = ax.twinx()
        bad.plot(t, [100 * s.bad_rate for s in result.samples], color="tab:red", alpha=0.4, linewidth=0.8)
        bad.set_ylabel("bad %", color="tab:red")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("seconds into the bench window")
    finish(fig, path)
