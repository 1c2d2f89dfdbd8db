"""Searches over simulations: the largest load a policy sustains (capacity) and the fewest
slots it needs (min-slots), both at a bad-rate limit. Bad rate is close to monotone in load and
slots; the searches bracket and bisect, and every probe is reported to `progress`."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from load.bound import analytic_bound
from load.sim.kernel import simulate
from load.sim.records import SimOptions
from load.sim.report import SimReport, summarize
from load.workload import LoadedWorkload, classes_of_slots, slot_mix

Progress = Callable[[str], None]


class CapacityResult(msgspec.Struct, kw_only=True):
    workload: str
    policy: str
    slots: int
    max_bad_rate: float
    capacity_scale: float
    goodput_rps: float
    bound_scale: float
    fraction_of_bound: float
    worst_model_bad_rate: float
    probes: list[tuple[float, float]]  # (scale, bad rate)
    slot_mix: str = ""  # a mixed fleet's classes, e.g. "4x1.0 + 4x0.5"; "" when homogeneous


class MinSlotsResult(msgspec.Struct, kw_only=True):
    workload: str
    policy: str
    scale: float
    max_bad_rate: float
    min_slots: int | None  # None: not met even at the largest slot count tried
    bound_slots: int  # ceil(needed_slots): no scheduler can do with fewer
    needed_slots: float
    probes: list[tuple[int, float]]


def run_report(
    loaded: LoadedWorkload, policy: str, options: SimOptions, *, timing: bool = False
) -> SimReport:
    slots = options.slots or loaded.workload.slots
    bound = analytic_bound(loaded, slots, options.core)
    return summarize(simulate(loaded, policy, options), loaded.workload.name, bound, timing=timing)


def _quiet(_message: str) -> None:
    pass


def capacity(
    loaded: LoadedWorkload,
    policy: str,
    options: SimOptions = SimOptions(),
    *,
    max_bad_rate: float = 0.01,
    tolerance: float = 0.01,
    progress: Progress = _quiet,
) -> CapacityResult:
    """Largest scale with bad rate <= limit, to within `tolerance` x the bound scale."""
    slots = options.slots or loaded.workload.slots
    bound_scale = analytic_bound(loaded, slots, options.core).bound_scale
    probes: list[tuple[float, float]] = []
    reports: dict[float, SimReport] = {}

    def passes(scale: float) -> bool:
        report = run_report(loaded, policy, msgspec.structs.replace(options, scale=scale))
        reports[scale] = report
        probes.append((scale, report.total.bad_rate))
        ok = report.total.bad_rate <= max_bad_rate
        progress(
            f"[capacity {policy}] scale {scale:.3f} ({scale / bound_scale:.3f} of bound): "
            f"bad rate {report.total.bad_rate:.2%} {'ok' if ok else 'over'}"
        )
        return ok

    low, high = 0.0, bound_scale * 1.05
    guess = bound_scale * 0.5
    while not passes(guess):
        high = guess
        guess /= 2
        if guess < bound_scale * 1e-3:
            guess = 0.0
            break
    low = guess
    if low > 0 and passes(high):  # better than the bound at this limit: widen
        while passes(high * 1.25):
            high *= 1.25
        low, high = high, high * 1.25
    while high - low > tolerance * bound_scale:
        mid = (low + high) / 2
        if passes(mid):
            low = mid
        else:
            high = mid
    best = reports.get(low)
    return CapacityResult(
        workload=loaded.workload.name,
        policy=policy,
        slots=slots,
        max_bad_rate=max_bad_rate,
        capacity_scale=low,
        goodput_rps=best.total.goodput_rps if best else 0.0,
        bound_scale=bound_scale,
        fraction_of_bound=low / bound_scale if bound_scale else 0.0,
        worst_model_bad_rate=best.worst_model_bad_rate if best else 1.0,
        probes=probes,
        slot_mix=slot_mix(classes_of_slots(loaded, slots)),
    )


def min_slots(
    loaded: LoadedWorkload,
    policy: str,
    options: SimOptions = SimOptions(),
    *,
    max_bad_rate: float = 0.01,
    slots_limit: int | None = None,
    progress: Progress = _quiet,
) -> MinSlotsResult:
    """Fewest slots with bad rate <= limit at `options.scale`."""
    bound = analytic_bound(loaded, 1, options.core)
    needed = bound.needed_slots(options.scale)
    slots_limit = slots_limit or max(4 * loaded.workload.slots, int(needed * 4) + 4)
    probes: list[tuple[int, float]] = []

    def passes(slots: int) -> bool:
        report = run_report(loaded, policy, msgspec.structs.replace(options, slots=slots))
        probes.append((slots, report.total.bad_rate))
        ok = report.total.bad_rate <= max_bad_rate
        progress(f"[min-slots {policy}] {slots} slots: bad rate {report.total.bad_rate:.2%} {'ok' if ok else 'over'}")
        return ok

    high = max(1, -(-int(needed * 1000) // 1000))
    while not passes(high):
        if high >= slots_limit:
            return MinSlotsResult(
                workload=loaded.workload.name, policy=policy, scale=options.scale,
                max_bad_rate=max_bad_rate, min_slots=None, bound_slots=_ceil(needed),
                needed_slots=needed, probes=probes,
            )
        high = min(slots_limit, high * 2)
    # With s slots at most s / needed of the load can be served, so fewer than
    # needed * (1 - limit) slots cannot pass (one more off for edge effects of the window).
    low = max(0, min(high - 1, _ceil(needed * (1 - max_bad_rate)) - 2))
    while high - low > 1:  # invariant: high passes, low fails (or is below the bound)
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return MinSlotsResult(
        workload=loaded.workload.name, policy=policy, scale=options.scale,
        max_bad_rate=max_bad_rate, min_slots=high, bound_slots=_ceil(needed),
        needed_slots=needed, probes=probes,
    )


def _ceil(x: float) -> int:
    return max(1, -(-int(round(x * 1e6)) // 1_000_000))
