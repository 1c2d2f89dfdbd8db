"""The autoscaler: how many slots should be active, and which. Pure: explicit time and inputs,
no I/O. The live coordinator runs it once per epoch and publishes the decision (metric and KV)
for any actuator; the simulator runs the same function with its own actuator in the loop.

Two rules turn a measurement into the slots needed:
- `demand` (ours): the measured rate x the per-request cost at the batch the core aims for
  (`coordinator.demand`), divided by the target utilisation. It is what the load needs under
  deferred batching, whatever the slots are doing now; under overload it keeps growing with the
  rate, where a busy fraction stops at 100%.
- `hpa`: Kubernetes' utilisation-target rule, desired = current x busy fraction / target, with
  its tolerance (no change while the ratio is within `hysteresis` of 1). This is what users of
  eager systems have today: it sees only how busy the slots are, so small eager batches at low
  load read as need, and a saturated pool can at most grow by 1/target per epoch.

Around either rule:
- deadline pressure: when more than `pressure_bad_rate` of the last epoch's requests were
  dropped or late and no slot is already starting, add `pressure_step` of the active slots;
- scale up at once (after `up_cooldown_s`), counting slots already starting as coming;
- scale down to the highest recommendation of the last `down_window_s` (HPA's stabilisation
  window), only when below current x (1 - hysteresis), and no sooner than `down_cooldown_s`
  after the last change, so a burst does not make the pool flap;
- clamp to [min_slots, max_slots].
`cold_start_s` is the actuator's delay before an added slot serves; the decision counts
starting slots and does not wait for them.

Mixed fleets (issue 16): `demand` is in reference slots (the slowest profile's slot-seconds);
with the slots' weights (the reference slots each is worth) in the order the actuator would hold
them, the slot count is the fewest of those whose weights cover the need. Without weights (a
homogeneous fleet) it is ceil(need), as before. `hpa` measures busy time on the slots
themselves, so its need is a slot count already.

Which slots: `choose_slots` keeps the most preferred (the core packs work onto them, see
shard.core.matcher) and drains the least preferred; a draining slot takes no new plans, finishes
what it has, and only then is released, so scale-down loses and duplicates nothing.
"""

from __future__ import annotations

import math

import msgspec

from coordinator.placement import weighted_count
from schemas.autoscale import AutoscaleConfig

__all__ = ["AutoscaleConfig", "AutoscaleDecision", "AutoscaleSignal", "AutoscaleState", "choose_slots", "decide",
           "hold_order"]

class AutoscaleSignal(msgspec.Struct, frozen=True, kw_only=True):
    """One epoch's measurements. Slot counts are slot-seconds per second."""

    now_s: float
    demand_slots: float  # sum over models of rate x cost at the core's target batch
    busy_slots: float  # measured busy slot time per second over the last epoch
    bad_rate: float = 0.0  # dropped or late over the last epoch, of requests answered in it
    active: int  # serving (not draining)
    starting: int = 0  # asked for, not serving yet (cold start)
    total: int = 0  # slots that exist, active or not (0: unknown; max_slots then caps alone)
    # Mixed fleets: reference slots each slot is worth, in `hold_order` (empty: one each).
    weights: tuple[float, ...] = ()


class AutoscaleState(msgspec.Struct, frozen=True, kw_only=True):
    """What the rule remembers between epochs."""

    last_change_s: float = -math.inf
    recent: tuple[tuple[float, int], ...] = ()  # (at, raw recommendation) within the down window


class AutoscaleDecision(msgspec.Struct, frozen=True, kw_only=True):
    target_slots: int  # active + starting the actuator should hold
    need_slots: float  # the rule's unrounded need
    reason: str  # "hold", "up", "down", "pressure"
    rule: str


def decide(config: AutoscaleConfig, state: AutoscaleState,
           signal: AutoscaleSignal) -> tuple[AutoscaleDecision, AutoscaleState]:
    """The slots to hold after this epoch, and the state for the next one."""
    current = signal.active + signal.starting
    need = _need(config, signal)
    weighted = signal.weights and config.rule != "hpa"
    raw = _clamp(config, signal, weighted_count(need, list(signal.weights)) if weighted else math.ceil(need - 1e-9))
    reason = "hold"
    if signal.bad_rate > config.pressure_bad_rate and signal.starting == 0 and signal.active > 0:
        pressed = _clamp(config, signal, signal.active + max(1, math.ceil(config.pressure_step * signal.active)))
        if pressed > raw:
            raw, reason = pressed, "pressure"
    now = signal.now_s
    recent = tuple((at, r) for at, r in state.recent if now - at < config.down_window_s) + ((now, raw),)
    target = current
    if raw > current and now - state.last_change_s >= config.up_cooldown_s:
        target, reason = raw, (reason if reason == "pressure" else "up")
    elif raw < current:
        stable = max(r for _at, r in recent)
        if (stable < current * (1.0 - config.hysteresis) or current > _cap(config, signal)) \
                and now - state.last_change_s >= config.down_cooldown_s:
            target, reason = stable, "down"
    target = _clamp(config, signal, target)
    changed = target != current
    new_state = AutoscaleState(last_change_s=now if changed else state.last_change_s, recent=recent)
    return AutoscaleDecision(target_slots=target, need_slots=need, reason=reason if changed else "hold",
                             rule=config.rule), new_state


def _need(config: AutoscaleConfig, signal: AutoscaleSignal) -> float:
    if config.rule == "hpa":
        if signal.active == 0:
            return 0.0 if signal.busy_slots <= 0 else float(signal.starting + 1)
        ratio = signal.busy_slots / signal.active / config.target_utilization
        if abs(ratio - 1.0) <= config.hysteresis:
            return float(signal.active + signal.starting)  # HPA's tolerance: leave it
        return signal.active * ratio
    # Busy slot time is not need: a work-conserving scheduler (eager) runs small batches on any
    # free slot, so its slots look busy at any pool size. Taking max(demand, busy) held eager at
    # 15.4 of 16 slots all day on `diurnal` (13,900 GPU-s); demand alone, 9,095 (BENCHMARKS §11).
    # A demand that the profiles underestimate shows as lateness: the pressure rule covers it.
    return signal.demand_slots / config.target_utilization


def _cap(config: AutoscaleConfig, signal: AutoscaleSignal) -> int:
    caps = [c for c in (config.max_slots, signal.total) if c > 0]
    return min(caps) if caps else math.inf  # type: ignore[return-value]


def _clamp(config: AutoscaleConfig, signal: AutoscaleSignal, slots: int) -> int:
    return int(min(max(slots, config.min_slots), _cap(config, signal)))


def choose_slots(ranked: list[str], target: int, serving: set[str], starting: set[str],
                 draining: set[str]) -> tuple[list[str], list[str]]:
    """Which slots to start and which to drain so that `target` are serving or starting.

    `ranked` is every slot in preference order (most preferred first). Scaling up takes back a
    draining slot before it starts a cold one (it is warm), most preferred first; scaling down
    drains starting slots first (they serve nothing yet), then the least preferred serving ones."""
    held = [s for s in ranked if s in serving or s in starting]
    if len(held) < target:
        missing = target - len(held)
        warm = [s for s in ranked if s in draining][:missing]
        cold = [s for s in ranked if s not in serving and s not in starting and s not in draining]
        return warm + cold[:missing - len(warm)], []
    excess = len(held) - target
    order = [s for s in reversed(held) if s in starting] + [s for s in reversed(held) if s in serving]
    return [], order[:excess]


def hold_order(ranked: list[str], serving: set[str], starting: set[str], draining: set[str]) -> list[str]:
    """Every slot in the order `choose_slots` holds them: serving and starting in preference
    order, then draining, then the rest. Scaling up to k takes the first k of these, scaling down
    keeps them but for starting slots (drained first), so the weights of the first k are the
    capacity a target of k buys (near enough while slots are starting)."""
    held = [s for s in ranked if s in serving or s in starting]
    warm = [s for s in ranked if s in draining and s not in serving and s not in starting]
    cold = [s for s in ranked if s not in serving and s not in starting and s not in draining]
    return held + warm + cold
