"""The scheduling core's own cost: simulated requests per CPU-second.

A simulation is run once while every event handed to the policy is recorded; the events are then
replayed into a fresh policy in a tight loop, so the figure is the core's time alone (the policy
is deterministic, so the replay takes the same decisions). The whole simulation's rate, kernel
included, is reported beside it."""

from __future__ import annotations

import gc
import random
import time

import msgspec

from load.schedule import build_schedule
from load.sim.kernel import SimOptions, model_configs, run_policy
from load.workload import LoadedWorkload, ModelWorkload, Segment, Workload
from schemas.profile import profile_from_sleep_spec
from shard.core.actions import Step
from shard.core.policies import make_policy


class CoreCost(msgspec.Struct, kw_only=True):
    label: str
    policy: str
    slots: int
    models: int
    requests: int
    events: int
    core_requests_per_cpu_s: float
    core_us_per_request: float
    sim_requests_per_cpu_s: float


def wide_workload(models: int, slots: int, load: float = 0.5, seconds: float = 2.0, seed: int = 5) -> LoadedWorkload:
    """`models` ResNet-like models of varied speed and SLO sharing `slots` slots at `load` of
    their analytic bound."""
    rng = random.Random(seed)
    entries, profiles = [], {}
    specs = []
    for i in range(models):
        slope = rng.choice([800, 1082, 1500])
        intercept = rng.choice([4000, 5204, 7000])
        slo_ms = rng.choice([100, 150, 200])
        specs.append((f"m{i}", f"sleep:{slope},{intercept}", slo_ms, slope / 1e6 * 1.15))
    demand_per_rps = sum(cost for *_rest, cost in specs) / models
    rps = load * slots / (models * demand_per_rps)
    for name, spec, slo_ms, _cost in specs:
        entries.append(ModelWorkload(
            name=name, profile=spec, slo_ms=slo_ms, arrival="poisson",
            warmup=[Segment(rps=rps, seconds=0.5)], bench=[Segment(rps=rps, seconds=seconds)],
        ))
        profiles[name] = profile_from_sleep_spec(spec)
    workload = Workload(seed=seed, slots=slots, models=entries, name=f"wide-{models}x{slots}")
    return LoadedWorkload(workload=workload, profiles=profiles)


class _Recorder:
    """Passes events through to a policy and keeps them for the replay."""

    def __init__(self, policy) -> None:  # noqa: ANN001
        self.policy = policy
        self.name = policy.name
        self.deadline_margin_ns = policy.deadline_margin_ns
        self.events: list[tuple[object, int]] = []

    def handle(self, event, now_ns: int) -> Step:  # noqa: ANN001
        self.events.append((event, now_ns))
        return self.policy.handle(event, now_ns)


def measure(loaded: LoadedWorkload, policy: str, label: str, scale: float = 1.0) -> CoreCost:
    options = SimOptions(scale=scale)
    models = model_configs(loaded, scale)
    schedule = build_schedule(loaded.workload, scale=scale)
    recorder = _Recorder(make_policy(policy, models, options.core))
    run = run_policy(recorder, models, loaded.workload.slots, schedule, options)
    requests = len(run.outcome)
    handle = make_policy(policy, models, options.core).handle
    events = recorder.events
    gc.collect()
    gc.freeze()  # the recording itself is not the core's garbage to scan
    started = time.process_time()
    for event, now_ns in events:
        handle(event, now_ns)
    core_s = time.process_time() - started
    gc.unfreeze()
    return CoreCost(
        label=label, policy=policy, slots=run.slots, models=len(run.model_names), requests=requests,
        events=len(recorder.events),
        core_requests_per_cpu_s=requests / core_s,
        core_us_per_request=core_s / requests * 1e6,
        sim_requests_per_cpu_s=requests / run.cpu_s,
    )
