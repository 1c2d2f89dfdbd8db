"""Builders for test inputs, so tests state only what matters to them."""

from __future__ import annotations

from load.workload import LoadedWorkload, ModelWorkload, Segment, Workload
from schemas.profile import ModelProfile, profile_from_sleep_spec
from shard.core.config import CoreConfig, ModelConfig
from shard.core.events import SlotAdded
from shard.core.latency import LatencyModel
from shard.core.symphony import SymphonyPolicy

RESNET = "sleep:1082,5204"  # the reference example profile (§1.5, §2.4)
MS = 1_000_000


def resnet_profile(batch_size_max: int = 499) -> ModelProfile:
    return profile_from_sleep_spec(RESNET, batch_size_max)


def resnet_latency() -> LatencyModel:
    return LatencyModel(resnet_profile())


def model_config(name: str = "resnet", *, slo_ms: float = 100, spec: str = RESNET) -> ModelConfig:
    return ModelConfig(name=name, slo_ns=int(slo_ms * MS), profile=profile_from_sleep_spec(spec))


def symphony_with_slots(
    slots: int = 1, models: list[ModelConfig] | None = None, config: CoreConfig | None = None
) -> SymphonyPolicy:
    policy = SymphonyPolicy(models or [model_config()], config or CoreConfig())
    for slot in range(slots):
        policy.handle(SlotAdded(slot), 0)
    return policy


def workload(
    *,
    slots: int = 2,
    rps: float = 200,
    seconds: float = 2,
    arrival: str = "poisson",
    models: int = 1,
    spec: str = RESNET,
    slo_ms: float = 100,
    seed: int = 1,
) -> LoadedWorkload:
    entries = [
        ModelWorkload(
            name=f"m{i}", profile=spec, slo_ms=slo_ms, arrival=arrival,
            warmup=[Segment(rps=rps, seconds=0.5)], bench=[Segment(rps=rps, seconds=seconds)],
            cooldown=[Segment(rps=rps, seconds=0.2)],
        )
        for i in range(models)
    ]
    w = Workload(seed=seed, slots=slots, models=entries, name="test")
    return LoadedWorkload(workload=w, profiles={m.name: profile_from_sleep_spec(spec) for m in entries})
