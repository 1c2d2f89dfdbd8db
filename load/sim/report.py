"""Figures from a simulation run: outcome counts over the bench window, goodput, batches, busy
slots, and the analytic bound for comparison."""

from __future__ import annotations

import msgspec
import numpy as np

from load.bound import Bound
from load.sim.outcomes import DROPPED, NOREPLY, SUCCESS, TIMEOUT
from load.sim.records import SimRun


class Counts(msgspec.Struct, kw_only=True):
    offered: int
    success: int
    dropped: int
    timeout: int
    noreply: int
    goodput_rps: float
    bad_rate: float


class ModelReport(Counts, kw_only=True):
    name: str
    mean_batch_size: float


class SimReport(msgspec.Struct, kw_only=True):
    workload: str
    policy: str
    seed: int
    slots: int
    scale: float
    goodput_rps: float  # success per second over the bench window (the total's, repeated)
    bad_rate: float
    total: Counts
    models: list[ModelReport]
    mean_batch_size: float
    batch_size_histogram: dict[int, int]
    slot_busy_fraction: float
    slot_busy_fractions: list[float]  # each slot's, in slot order (consolidation leaves some idle)
    busy_slots: float
    needed_slots: float
    bound_scale: float
    worst_model_bad_rate: float
    model_shards: dict[str, int] = {}  # model -> shards serving it (more than one: split; issue 14)
    timing: dict[str, float] | None = None


def _counts(outcome: np.ndarray, bench_s: float) -> dict[str, float]:
    offered = int(len(outcome))
    success = int(np.count_nonzero(outcome == SUCCESS))
    return {
        "offered": offered,
        "success": success,
        "dropped": int(np.count_nonzero(outcome == DROPPED)),
        "timeout": int(np.count_nonzero(outcome == TIMEOUT)),
        "noreply": int(np.count_nonzero(outcome == NOREPLY)),
        "goodput_rps": success / bench_s if bench_s > 0 else 0.0,
        "bad_rate": 1.0 - success / offered if offered else 0.0,
    }


def summarize(run: SimRun, workload_name: str, bound: Bound, *, timing: bool = False) -> SimReport:
    schedule = run.schedule
    outcome = np.frombuffer(bytes(run.outcome), dtype=np.uint8)
    times = schedule.times_ns
    models: list[ModelReport] = []
    in_window_all = np.zeros(len(times), dtype=bool)
    goodput = 0.0
    batch_sizes = np.array([b.size for b in run.batches], dtype=np.int64)
    batch_model = np.array([b.model_index for b in run.batches], dtype=np.int64)
    batch_start = np.array([b.start_ns for b in run.batches], dtype=np.int64)
    window_start, window_end = schedule.window_ns
    for i, name in enumerate(run.model_names):
        start, end = schedule.bench_start_ns[i], schedule.bench_end_ns[i]
        mask = (schedule.model_index == i) & (times >= start) & (times < end)
        in_window_all |= mask
        bench_s = (end - start) / 1e9
        counts = _counts(outcome[mask], bench_s)
        goodput += counts["goodput_rps"]
        in_batches = (batch_model == i) & (batch_start >= start) & (batch_start < end)
        mean_batch = float(batch_sizes[in_batches].mean()) if in_batches.any() else 0.0
        models.append(ModelReport(name=name, mean_batch_size=mean_batch, **counts))
    window_s = (window_end - window_start) / 1e9
    total = Counts(**_counts(outcome[in_window_all], window_s))
    total.goodput_rps = goodput
    in_window_batches = (batch_start >= window_start) & (batch_start < window_end)
    sizes = batch_sizes[in_window_batches]
    values, freq = np.unique(sizes, return_counts=True)
    busy_slots = run.busy_ns_in_window / 1e9 / window_s if window_s > 0 else 0.0
    return SimReport(
        workload=workload_name,
        policy=run.policy,
        seed=schedule.seed,
        slots=run.slots,
        scale=schedule.scale,
        goodput_rps=total.goodput_rps,
        bad_rate=total.bad_rate,
        total=total,
        models=models,
        mean_batch_size=float(sizes.mean()) if len(sizes) else 0.0,
        batch_size_histogram={int(v): int(f) for v, f in zip(values, freq, strict=True)},
        slot_busy_fraction=busy_slots / run.slots if run.slots else 0.0,
        slot_busy_fractions=[run.busy_ns_by_slot.get(s, 0) / 1e9 / window_s if window_s > 0 else 0.0
                             for s in range(run.slots)],
        busy_slots=busy_slots,
        needed_slots=bound.needed_slots(schedule.scale),
        bound_scale=bound.bound_scale,
        worst_model_bad_rate=max(m.bad_rate for m in models),
        model_shards={name: run.model_shards.get(name, 1) for name in run.model_names},
        timing=(
            {
                "cpu_s": run.cpu_s,
                "requests": float(len(times)),
                "requests_per_cpu_s": len(times) / run.cpu_s if run.cpu_s > 0 else 0.0,
                "events": float(run.events),
            }
            if timing
            else None
        ),
    )
