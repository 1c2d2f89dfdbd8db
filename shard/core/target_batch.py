"""Target batch size estimation (reference §1.5): Nexus's rule on the measured mean rate.

Phase 1 (several slots): the largest b with l(b)(1 + 1/n) <= T - Ddata*b, where n = r*l(b)/b
slots run batches of b back to back; a batch waits about l/n to fill, then runs for l.
Phase 2 (less than one slot, switched on n of the FAILING b): the largest b with
l(b) + b/r + Ddata*b <= T.
Both conditions are monotone in b for a monotone profile, so binary search finds what the
reference's linear scan finds. Recomputed only when the rate estimate changes.
"""

from __future__ import annotations

from shard.core.latency import LatencyModel

NS_PER_S = 1e9


def estimate_target_batch_size(
    latency: LatencyModel, budget_ns: int, data_ns: int, rate_rps: float
) -> int:
    """BSE with rps multiplier 1 and std multiplier 0: the effective rate is the mean."""
    budget_s = budget_ns / NS_PER_S
    data_s = data_ns / NS_PER_S
    fail_b = _first_true(1, latency.batch_size_max + 1, lambda b: _phase1_fails(latency, b, budget_s, data_s, rate_rps))
    fail_latency_s = latency.forward(fail_b) / NS_PER_S
    n_at_fail = rate_rps * fail_latency_s / fail_b
    if n_at_fail > 1:
        return max(1, fail_b - 1)
    if rate_rps <= 0:
        return 1
    fail_b2 = _first_true(2, latency.batch_size_max + 1,
                          lambda b: _phase2_fails(latency, b, budget_s, data_s, rate_rps))
    return fail_b2 - 1


def _phase1_fails(latency: LatencyModel, b: int, budget_s: float, data_s: float, rate: float) -> bool:
    latency_s = latency.forward(b) / NS_PER_S
    n = rate * latency_s / b
    n1 = max(n, 1.0)
    return latency_s * (1 + 1 / n1) > budget_s - data_s * b


def _phase2_fails(latency: LatencyModel, b: int, budget_s: float, data_s: float, rate: float) -> bool:
    return latency.forward(b) / NS_PER_S + b / rate + data_s * b > budget_s


def _first_true(low: int, high: int, predicate) -> int:  # noqa: ANN001 - local helper
    """Smallest b in [low, high] with predicate(b); predicate(high) must be true."""
    while low < high:
        mid = (low + high) >> 1
        if predicate(mid):
            high = mid
        else:
            low = mid + 1
    return low


def max_batch_with_full_budget(latency: LatencyModel, budget_ns: int, network_ns: int = 2_000_000) -> int:
    """Largest b >= 1 with l(b) <= budget - 2 ms - pre - post (reference §1.5,
    GetMaxBatchWithFullBudget; the 2 ms is the profile's hard-coded network latency)."""
    limit_ns = budget_ns - network_ns - latency.pre_post_ns
    best = 1
    for b in range(1, latency.batch_size_max + 1):
        if latency.forward_ns[b] > limit_ns:
            break
        best = b
    return best


def best_batch(latency: LatencyModel, slo_ns: int, resp_ns: int, ctrl_ns: int, data_ns: int) -> int:
    """b*: the largest batch with E(b) <= SLO - Dresp - Dctrl - Ddata*b (0 if even one misses);
    E(b*)/b* is the least slot time per request any scheduler can spend on this model."""
    best = 0
    for b in range(1, latency.batch_size_max + 1):
        if latency.exec_ns[b] <= slo_ns - resp_ns - ctrl_ns - data_ns * b:
            best = b
    return best
