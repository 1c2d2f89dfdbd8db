"""Arrival processes keep their mean rate and shape, and a seed gives the same schedule."""

import numpy as np
import pytest
from scipy import stats

from load.arrivals import gaps_s, parse_arrival, segment_arrivals_s
from load.schedule import build_schedule
from tests.factories import workload


@pytest.mark.parametrize("spec", ["const", "poisson", "gamma:0.5", "gamma:2"])
def test_gaps_have_the_requested_mean(spec: str) -> None:
    gaps = gaps_s(parse_arrival(spec), 400.0, 200_000, np.random.default_rng(1))
    assert gaps.mean() == pytest.approx(1 / 400, rel=0.02)


def test_poisson_gaps_are_exponential() -> None:
    gaps = gaps_s(parse_arrival("poisson"), 100.0, 20_000, np.random.default_rng(2))
    assert stats.kstest(gaps, "expon", args=(0, 1 / 100)).pvalue > 0.01


def test_gamma_shape_sets_the_burstiness() -> None:
    gaps = gaps_s(parse_arrival("gamma:0.1"), 100.0, 200_000, np.random.default_rng(3))
    assert gaps.std() / gaps.mean() == pytest.approx(10**0.5, rel=0.05)  # CV = 1/sqrt(shape)


@pytest.mark.parametrize("spec", ["gamma:0", "gamma:x", "uniform", "gamma:-1"])
def test_bad_arrival_specs_are_rejected(spec: str) -> None:
    with pytest.raises(ValueError, match="bad arrival"):
        parse_arrival(spec)


def test_segment_arrivals_fall_inside_the_segment() -> None:
    times = segment_arrivals_s(parse_arrival("poisson"), 1000.0, 1.0, 3.0, np.random.default_rng(4))
    assert times.min() > 1.0 and times.max() < 3.0
    assert len(times) == pytest.approx(2000, rel=0.1)


def test_same_seed_same_schedule_and_scale_multiplies_the_rate() -> None:
    loaded = workload(rps=300, seconds=4)
    a = build_schedule(loaded.workload, scale=1.0)
    b = build_schedule(loaded.workload, scale=1.0)
    c = build_schedule(loaded.workload, scale=2.0)
    assert np.array_equal(a.times_ns, b.times_ns)
    assert len(c.times_ns) == pytest.approx(2 * len(a.times_ns), rel=0.1)
    assert np.all(np.diff(a.times_ns) >= 0)
