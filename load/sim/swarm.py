"""Swarm testing (STYLE §6): one seed draws a whole configuration (models, profiles, SLOs,
slots, burstiness, policy and its switches, slot loss, noise) and runs it under the checkers.
A failure names the command that replays it: `symphony sim fuzz --seed N`.

The slot speeds of a mixed fleet (issue 16) and the slot_profiles mode come from a generator of
their own, `random.Random(f"{seed}:speeds")`, so every draw of the main generator, and so every
seed recorded before mixed fleets, is what it was."""

from __future__ import annotations

import random
import traceback

import msgspec

from load.sim.kernel import simulate
from load.sim.records import SimEvent, SimOptions
from load.workload import LoadedWorkload, ModelWorkload, Segment, Workload, with_slot_speeds
from schemas.profile import profile_from_sleep_spec
from shard.core.config import CoreConfig, DropPolicy, SchedulableCondition, SlotProfiles
from shard.core.policies import POLICIES


class SwarmCase(msgspec.Struct, frozen=True, kw_only=True):
    seed: int
    policy: str
    loaded: LoadedWorkload
    options: SimOptions


def draw_case(seed: int) -> SwarmCase:
    rng = random.Random(seed)
    models: list[ModelWorkload] = []
    profiles = {}
    for i in range(rng.randint(1, 5)):
        slope = rng.choice([20, 100, 400, 1082, 3000])
        intercept = rng.choice([200, 1500, 5204, 12000])
        pre_post = rng.choice(["", "", f",{rng.randint(0, 4000)},{rng.randint(0, 2000)}"])
        spec = f"sleep:{slope},{intercept}{pre_post}"
        batch_max = rng.choice([1, 4, 16, 64, 499])
        exec_one_ms = (slope + intercept) / 1000
        slo_ms = rng.choice([max(3.0, exec_one_ms * 0.8), exec_one_ms * 2 + 3, 25, 100, 300])
        rps = rng.choice([5, 50, 300, 1500])
        arrival = rng.choice(["const", "poisson", f"gamma:{rng.choice([0.1, 0.5, 2])}"])
        name = f"m{i}"
        models.append(
            ModelWorkload(
                name=name, profile=spec, slo_ms=round(slo_ms, 3), arrival=arrival,
                warmup=[Segment(rps=rps, seconds=0.3)],
                bench=[Segment(rps=rps * rng.choice([0.5, 1, 2]), seconds=1.0), Segment(rps=rps, seconds=0.7)],
                cooldown=[Segment(rps=rps, seconds=0.2)],
                batch_size_max=batch_max,
            )
        )
        profiles[name] = profile_from_sleep_spec(spec).capped(batch_max)
    slots = rng.randint(1, 12)
    workload = Workload(seed=seed, slots=slots, models=models, name=f"swarm-{seed}")
    policy = rng.choice(list(POLICIES))
    core = CoreConfig(
        drop=rng.choice(list(DropPolicy)),
        schedulable=rng.choice(list(SchedulableCondition)),
        queue_len_max=rng.choice([100_000, 200]),
    )
    slot_events = []
    if slots > 1 and rng.random() < 0.4:
        victim = rng.randrange(slots)
        lost_at = rng.uniform(0.2, 1.5)
        slot_events.append(SimEvent(at_s=lost_at, kind="remove", slot_id=victim))
        if rng.random() < 0.7:
            slot_events.append(SimEvent(at_s=lost_at + rng.uniform(0.05, 0.6), kind="add", slot_id=victim))
    options = SimOptions(
        slots=slots, scale=1.0, noise=rng.choice([0.0, 0.0, 0.05]), checks=True, core=core,
        slot_events=slot_events,
    )
    loaded = LoadedWorkload(workload=workload, profiles=profiles)
    speeds, mode = draw_fleet(seed, slots)
    if speeds:
        loaded = with_slot_speeds(loaded, speeds)
        options = msgspec.structs.replace(options, core=msgspec.structs.replace(core, slot_profiles=mode))
    return SwarmCase(seed=seed, policy=policy, loaded=loaded, options=options)


def draw_fleet(seed: int, slots: int) -> tuple[list[float], SlotProfiles]:
    """A mixed fleet for half the seeds: each slot's speed from {1, 0.5, 0.25}, and the
    slot_profiles mode; ([], the default) for a homogeneous fleet. Its own generator (module doc)."""
    rng = random.Random(f"{seed}:speeds")
    if rng.random() < 0.5:
        return [], SlotProfiles.PER_SLOT
    speeds = [rng.choice([1.0, 0.5, 0.25]) for _ in range(slots)]
    return speeds, rng.choice(list(SlotProfiles))


def run_swarm_seed(seed: int) -> str | None:
    """Run one seed twice; None when every check held and both runs agree, else the failure."""
    case = draw_case(seed)
    try:
        first = simulate(case.loaded, case.policy, case.options)
        second = simulate(case.loaded, case.policy, case.options)
    except AssertionError as error:  # InvariantViolation included
        return f"{case.policy}: {error}\n{traceback.format_exc(limit=4)}"
    if first.outcome != second.outcome or first.batches != second.batches:
        return f"{case.policy}: the same seed gave different results"
    return None
