"""Builders for test inputs, so tests state only what matters to them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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


# ---- cluster configs for the tests that start a cluster ---------------------------------------
SLEEP_KINDS = {"resnet_sleep": "sleep:1082,5204", "fast_sleep": "sleep:20,500", "bert_sleep": "sleep:2000,8000"}


def cluster_toml(models: Mapping[str, tuple[str, float, int]], agents: Mapping[str, Sequence[str]], *,
                 coordinators: int = 0, shards: Mapping[str, int | None] | None = None,
                 metrics_ports: Mapping[str, int] | None = None, shard_rps_max: float | None = None) -> str:
    """The TOML of a cluster whose every slot hosts every model. `models`: name -> (kind, SLO ms,
    largest batch); `agents`: id -> slot ids; `shards`: id -> slot_grace_ms (None: the default).
    With coordinators, the fast control timings the cluster tests share: epochs every second, a
    1.5 s lease and heartbeat TTL, so a departure is seen within a couple of seconds."""
    lines = ['subject_prefix = "symphony"']
    if coordinators:
        lines += ["[coordinator]", f"count = {coordinators}", "epoch_s = 1.0", "lease_s = 1.5", "heartbeat_ttl_s = 1.5"]
        if shard_rps_max is not None:
            lines.append(f"shard_rps_max = {shard_rps_max}")
    for name, (kind, slo_ms, batch_size_max) in models.items():
        lines += ["[[models]]", f'name = "{name}"', f'kind = "{kind}"', f"slo_ms = {slo_ms}",
                  f"batch_size_max = {batch_size_max}"]
    hosted = ", ".join(f'"{name}"' for name in models)
    for agent_id, slots in agents.items():
        lines += ["[[agents]]", f'id = "{agent_id}"']
        if metrics_ports and agent_id in metrics_ports:
            lines.append(f"metrics_port = {metrics_ports[agent_id]}")
        lines.append("slots = [" + ", ".join(f'{{id = "{slot}", models = [{hosted}]}}' for slot in slots) + "]")
    for shard_id, grace_ms in (shards if shards is not None else {"shard-0": 1500}).items():
        lines += ["[[shards]]", f'id = "{shard_id}"']
        if grace_ms is not None:
            lines.append(f"slot_grace_ms = {grace_ms}")
    return "\n".join(lines) + "\n"
