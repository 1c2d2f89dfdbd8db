"""The live generator's schedule and its classification of outcomes."""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from load.generator import OUTCOMES, batch_times, classify, plan_from_trace, plan_from_workload, read_trace
from tests.factories import workload


def test_rate_sets_the_total_bench_rate_and_gaps_are_exponential() -> None:
    loaded = workload(rps=100, seconds=20, arrival="poisson", models=2)
    plan = plan_from_workload(loaded, rate=1000.0)
    for i in range(2):
        mine = plan.times_s[(plan.model_index == i) & (plan.times_s >= plan.bench_start_s[i])
                            & (plan.times_s < plan.bench_end_s[i])]
        rate = len(mine) / (plan.bench_end_s[i] - plan.bench_start_s[i])
        assert rate == pytest.approx(500, rel=0.05)  # the two models share the 1000/s evenly
        assert stats.kstest(np.diff(mine), "expon", args=(0, 1 / 500)).pvalue > 0.01


def test_const_arrivals_are_evenly_spaced() -> None:
    plan = plan_from_workload(workload(rps=200, seconds=2, arrival="const"))
    gaps = np.diff(plan.times_s)
    assert gaps.min() == pytest.approx(gaps.max()) == pytest.approx(1 / 200)


def test_classification_of_every_outcome() -> None:
    status = np.array([200, 200, 504, 429, 503, 400, 404, 413, 500, 0])
    latency = np.array([0.05, 0.2, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, np.nan])
    names = [OUTCOMES[k] for k in classify(status, latency, np.full(10, 0.1))]
    assert names == ["ok", "late", "dropped", "rejected", "rejected", "error", "error", "error", "error", "noreply"]


def test_gap_traces_replay_in_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "gaps.txt"
    path.write_text("# gaps in us\n1000\n2000\n\n500\n")
    plan = plan_from_trace(read_trace(str(path)), "m", 50.0)
    assert plan.times_s.tolist() == pytest.approx([0.001, 0.003, 0.0035])
    path.write_text("100\nsoon\n")
    with pytest.raises(ValueError, match="line|:2"):
        read_trace(str(path))


def test_a_batching_window_sends_what_arrived_in_it_at_its_end() -> None:
    times = np.array([0.0001, 0.0009, 0.0011, 0.0035])
    assert list(batch_times(times, 1.0)) == pytest.approx([0.001, 0.001, 0.002, 0.004])
    assert batch_times(times, 0.0) is times
