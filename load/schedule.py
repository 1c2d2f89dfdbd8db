"""Turn a workload into a concrete, seeded arrival schedule (simulator and live generator).

Per model i: a start offset U(0,1)/rps_0, then segments warmup -> bench -> cooldown, each with a
fresh generator seeded from (seed, i, segment), as in the reference harness (§3.1). The bench
window of each model is where its outcomes are counted, by receive time.
"""

from __future__ import annotations

import msgspec
import numpy as np

from load.arrivals import parse_arrival, segment_arrivals_s
from load.workload import Workload

NS_PER_S = 1_000_000_000


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """Arrival instants (ns, sorted) with the model index of each, and bench windows."""

    times_ns: np.ndarray  # int64, sorted
    model_index: np.ndarray  # int32, same length
    bench_start_ns: list[int]  # per model
    bench_end_ns: list[int]  # per model
    seed: int
    scale: float

    @property
    def window_ns(self) -> tuple[int, int]:
        """The union of the models' bench windows."""
        return min(self.bench_start_ns), max(self.bench_end_ns)


def build_schedule(workload: Workload, *, scale: float = 1.0, seed: int | None = None) -> Schedule:
    seed = workload.seed if seed is None else seed
    per_model_times: list[np.ndarray] = []
    bench_start: list[int] = []
    bench_end: list[int] = []
    for i, model in enumerate(workload.models):
        process = parse_arrival(model.arrival)
        segments = model.segments()
        first_rps = segments[0].rps * scale
        offset_s = float(np.random.default_rng([seed, i]).random()) / first_rps if first_rps > 0 else 0.0
        chunks: list[np.ndarray] = []
        segment_start_s = offset_s
        last_s = offset_s
        for k, segment in enumerate(segments):
            end_s = segment_start_s + segment.seconds
            rng = np.random.default_rng([seed, i, k + 1])
            times = segment_arrivals_s(process, segment.rps * scale, last_s, end_s, rng)
            if len(times):
                chunks.append(times)
                last_s = float(times[-1])
            else:
                last_s = max(last_s, end_s)
            segment_start_s = end_s
        times_s = np.concatenate(chunks) if chunks else np.empty(0)
        per_model_times.append((times_s * NS_PER_S).astype(np.int64))
        bench_start.append(int((offset_s + model.warmup_s) * NS_PER_S))
        bench_end.append(int((offset_s + model.warmup_s + model.bench_s) * NS_PER_S))
    times = np.concatenate(per_model_times) if per_model_times else np.empty(0, np.int64)
    index = np.concatenate(
        [np.full(len(t), i, dtype=np.int32) for i, t in enumerate(per_model_times)]
    )
    order = np.argsort(times, kind="stable")
    return Schedule(
        times_ns=times[order],
        model_index=index[order],
        bench_start_ns=bench_start,
        bench_end_ns=bench_end,
        seed=seed,
        scale=scale,
    )
