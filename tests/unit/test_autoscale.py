"""The autoscaler's decision: the two rules, deadline pressure, cool-down, the down window,
hysteresis, clamps, and which slots start and drain."""

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.autoscale import AutoscaleConfig, AutoscaleSignal, AutoscaleState, choose_slots, decide, hold_order

CONFIG = AutoscaleConfig(target_utilization=0.5, min_slots=1, max_slots=16, down_cooldown_s=10, down_window_s=20)


def signal(now_s: float, demand: float, active: int, *, busy: float | None = None, bad: float = 0.0,
           starting: int = 0) -> AutoscaleSignal:
    return AutoscaleSignal(now_s=now_s, demand_slots=demand, busy_slots=demand if busy is None else busy,
                           bad_rate=bad, active=active, starting=starting, total=16)


def test_demand_rule_scales_up_at_once_to_demand_over_target() -> None:
    decision, state = decide(CONFIG, AutoscaleState(), signal(0, demand=3.2, active=2))
    assert decision.target_slots == 7 and decision.reason == "up"  # ceil(3.2 / 0.5)
    assert state.last_change_s == 0


def test_starting_slots_count_as_coming() -> None:
    decision, _ = decide(CONFIG, AutoscaleState(), signal(0, demand=3.2, active=2, starting=5))
    assert decision.target_slots == 7 and decision.reason == "hold"


def test_scale_down_waits_for_the_window_and_the_cooldown() -> None:
    state = AutoscaleState()
    decision, state = decide(CONFIG, state, signal(0, demand=4.0, active=8))
    assert decision.target_slots == 8
    decision, state = decide(CONFIG, state, signal(5, demand=1.0, active=8))
    assert decision.target_slots == 8  # the window still holds the 8 recommended at t=0
    decision, state = decide(CONFIG, state, signal(21, demand=1.0, active=8))
    assert decision.target_slots == 2 and decision.reason == "down"
    decision, state = decide(CONFIG, state, signal(25, demand=0.1, active=2))
    assert decision.target_slots == 2  # cool-down after the last change


def test_hysteresis_keeps_a_near_miss() -> None:
    config = AutoscaleConfig(target_utilization=0.5, hysteresis=0.2, down_cooldown_s=0, down_window_s=0)
    decision, _ = decide(config, AutoscaleState(), signal(0, demand=4.4, active=10))  # need 9 > 10 x 0.8
    assert decision.target_slots == 10
    decision, _ = decide(config, AutoscaleState(), signal(0, demand=3.9, active=10))  # need 8 <= 8
    assert decision.target_slots == 10
    decision, _ = decide(config, AutoscaleState(), signal(0, demand=3.4, active=10))  # need 7 < 8
    assert decision.target_slots == 7


def test_deadline_pressure_adds_slots_unless_some_are_starting() -> None:
    decision, _ = decide(CONFIG, AutoscaleState(), signal(0, demand=1.0, active=4, bad=0.05))
    assert decision.target_slots == 5 and decision.reason == "pressure"
    decision, _ = decide(CONFIG, AutoscaleState(), signal(0, demand=2.4, active=4, bad=0.05, starting=1))
    assert decision.target_slots == 5 and decision.reason == "hold"


def test_hpa_rule_reads_the_busy_fraction_with_its_tolerance() -> None:
    hpa = AutoscaleConfig(rule="hpa", target_utilization=0.5, hysteresis=0.1, down_cooldown_s=0, down_window_s=0)
    decision, _ = decide(hpa, AutoscaleState(), signal(0, demand=0.5, busy=4.0, active=4))  # saturated: 4/4
    assert decision.target_slots == 8  # current x 1.0 / 0.5: at most doubles per epoch
    decision, _ = decide(hpa, AutoscaleState(), signal(0, demand=0.5, busy=2.1, active=4))  # ratio 1.05
    assert decision.target_slots == 4
    decision, _ = decide(hpa, AutoscaleState(), signal(0, demand=0.5, busy=1.0, active=4))
    assert decision.target_slots == 2


def test_clamps_to_min_and_max() -> None:
    decision, _ = decide(CONFIG, AutoscaleState(), signal(0, demand=100.0, active=4))
    assert decision.target_slots == 16
    zero = AutoscaleConfig(min_slots=2, down_cooldown_s=0, down_window_s=0)
    decision, _ = decide(zero, AutoscaleState(), signal(0, demand=0.0, active=0))
    assert decision.target_slots == 2


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20), st.floats(0, 20), st.floats(0, 1), st.integers(0, 3)),
                min_size=1, max_size=40))
def test_target_stays_within_bounds_and_never_drops_inside_the_cooldown(steps: list) -> None:
    state, held, last_change = AutoscaleState(), 4, None
    for i, (demand, busy, bad, starting) in enumerate(steps):
        now = i * 2.0
        starting = min(starting, held)  # of the slots held, some may still be starting
        decision, state = decide(CONFIG, state, signal(now, demand, held - starting, busy=busy, bad=bad,
                                                       starting=starting))
        assert CONFIG.min_slots <= decision.target_slots <= 16
        if decision.target_slots < held:
            assert last_change is None or now - last_change >= CONFIG.down_cooldown_s
        if decision.target_slots != held:
            last_change = now
        held = decision.target_slots


def test_choose_slots_drains_the_least_preferred_and_takes_warm_ones_back_first() -> None:
    ranked = [f"s{i}" for i in range(6)]
    start, drain = choose_slots(ranked, 2, serving={"s0", "s1", "s2", "s3"}, starting=set(), draining=set())
    assert start == [] and drain == ["s3", "s2"]
    start, drain = choose_slots(ranked, 3, serving={"s0", "s1"}, starting={"s4"}, draining={"s3"})
    assert start == [] and drain == []
    start, drain = choose_slots(ranked, 1, serving={"s0", "s1"}, starting={"s4"}, draining={"s3"})
    assert drain == ["s4", "s1"]  # a starting slot serves nothing yet: it goes first
    start, drain = choose_slots(ranked, 5, serving={"s0", "s1"}, starting=set(), draining={"s3"})
    assert start == ["s3", "s2", "s4"] and drain == []


# ---- mixed fleets (issue 16) ----------------------------------------------------------------

def test_the_need_in_reference_slots_becomes_the_fewest_slots_whose_weights_cover_it() -> None:
    """3.2 reference slot-seconds at 50% need 6.4 reference slots: three slots twice as fast and
    one slow one (2+2+2+1 = 7), where a homogeneous fleet needs seven."""
    weights = (2.0, 2.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    mixed = msgspec.structs.replace(signal(0, demand=3.2, active=2), weights=weights)
    decision, _ = decide(CONFIG, AutoscaleState(), mixed)
    assert decision.target_slots == 4 and decision.need_slots == 3.2 / 0.5
    ones = msgspec.structs.replace(signal(0, demand=3.2, active=2), weights=(1.0,) * 16)
    assert decide(CONFIG, AutoscaleState(), ones)[0] == decide(CONFIG, AutoscaleState(), signal(0, 3.2, 2))[0]


def test_hpa_measures_slots_themselves_and_ignores_weights() -> None:
    hpa = msgspec.structs.replace(CONFIG, rule="hpa")
    plain = signal(0, demand=0, active=4, busy=3.6)
    mixed = msgspec.structs.replace(plain, weights=(2.0,) * 16)
    assert decide(hpa, AutoscaleState(), mixed)[0] == decide(hpa, AutoscaleState(), plain)[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["serving", "starting", "draining", "idle"]), max_size=10), st.integers(0, 10))
def test_scaling_up_takes_the_slots_in_hold_order(phases: list[str], target: int) -> None:
    ranked = [f"gpu-{i}" for i in range(len(phases))]
    by = {p: {s for s, q in zip(ranked, phases, strict=True) if q == p} for p in ("serving", "starting", "draining")}
    order = hold_order(ranked, by["serving"], by["starting"], by["draining"])
    assert sorted(order) == sorted(ranked)
    held = len(by["serving"]) + len(by["starting"])
    start, _ = choose_slots(ranked, target, by["serving"], by["starting"], by["draining"])
    if target > held:
        assert start == order[held:target]
