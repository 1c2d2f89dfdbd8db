"""Reference §1.5: the target batch size estimator reproduces the worked table exactly."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.profile import profile_from_sleep_spec
from shard.core.latency import LatencyModel
from shard.core.target_batch import estimate_target_batch_size, max_batch_with_full_budget
from tests.factories import MS, resnet_latency

BUDGET_NS = 100 * MS - 100_000 - 2 * MS  # T = SLO - Dctrl - Dresp
DATA_NS = 50_000

WORKED_TABLE = {10: 1, 50: 4, 100: 8, 200: 15, 300: 20, 500: 29, 1000: 43, 2000: 56, 5000: 69, 10000: 75}


@pytest.mark.parametrize(("rate", "target"), sorted(WORKED_TABLE.items()))
def test_reproduces_the_reference_worked_table(rate: int, target: int) -> None:
    assert estimate_target_batch_size(resnet_latency(), BUDGET_NS, DATA_NS, rate) == target


def test_target_before_the_first_rate_sample_is_max_batch_with_half_slo() -> None:
    assert max_batch_with_full_budget(resnet_latency(), 50 * MS) == 39


def test_zero_rate_gives_batch_of_one() -> None:
    assert estimate_target_batch_size(resnet_latency(), BUDGET_NS, DATA_NS, 0.0) == 1


def _linear_reference(latency: LatencyModel, budget_ns: int, data_ns: int, rate: float) -> int:
    """The reference's scans, verbatim (reference §1.5)."""
    budget, data = budget_ns / 1e9, data_ns / 1e9
    b = 1
    while True:
        length = latency.forward(b) / 1e9
        n = rate * length / b
        if length * (1 + 1 / max(n, 1)) > budget - data * b:
            bs, n_at_fail = max(1, b - 1), n
            break
        b += 1
    if n_at_fail > 1:
        return bs
    b = 2
    while True:
        wait = b / rate if rate > 0 else float("inf")
        if latency.forward(b) / 1e9 + wait + data * b > budget:
            return b - 1
        b += 1


@settings(max_examples=200, deadline=None)
@given(
    slope=st.integers(1, 20_000),
    intercept=st.integers(0, 50_000),
    batch_max=st.integers(1, 300),
    slo_ms=st.integers(5, 1000),
    rate=st.floats(0, 50_000),
)
def test_binary_search_matches_the_reference_linear_scan(slope, intercept, batch_max, slo_ms, rate) -> None:
    latency = LatencyModel(profile_from_sleep_spec(f"sleep:{slope},{intercept}", batch_max))
    budget = slo_ms * MS - 2_100_000
    assert estimate_target_batch_size(latency, budget, DATA_NS, rate) == _linear_reference(
        latency, budget, DATA_NS, rate
    )
