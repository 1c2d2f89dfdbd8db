"""Issue 16, live side: what names a slot's class (the agent's device), sleep agents at a speed,
and the shard's rule that a slot and a model meet in the core only with a profile that covers
the slot's class."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from gpu_agent.agent import Agent
from gpu_agent.runners import SleepRunner, jax_device_class, sleep_class, slot_class
from runtime.cluster_config import ClusterConfig
from runtime.status import format_status
from schemas.model import ModelSpec, TensorSpec
from schemas.profile import profile_from_sleep_spec
from schemas.status_report import AgentStatus, SlotStatus
from shard.core.config import ModelConfig
from shard.service.follower import AssignmentFollower
from shard.service.metrics import ASSIGNMENT_STEPS
from shard.service.specs import ClassedSpec, claimable_class, classed_spec, plans_safely
from tests.factories import RESNET

X = [TensorSpec(name="x", datatype="FP32", shape=[-1, 1])]


def spec(cls: str, speed: float = 1.0, name: str = "m") -> ModelSpec:
    """What an agent of class `cls` publishes for a sleep model at `speed`."""
    profile = msgspec.structs.replace(profile_from_sleep_spec(RESNET, 64).at_speed(speed), device=cls)
    return ModelSpec(name=name, platform="sleep", slo_ms=100, batch_size_max=64, inputs=X, outputs=X, profile=profile)


def config(agents: str, kind: str = RESNET) -> ClusterConfig:
    raw = {"models": [{"name": "m", "kind": kind, "slo_ms": 100}], "shards": [{"id": "s"}],
           "agents": [{"id": "a", "slots": [{"id": "a0", "models": ["m"]}], **msgspec.json.decode(agents)}]}
    return msgspec.convert(raw, ClusterConfig)


def test_a_class_is_the_configured_name_else_the_device_kind_else_the_sleep_speed() -> None:
    assert sleep_class(1.0) == "sleep" and sleep_class(0.5) == "sleep@0.5x" and sleep_class(2) == "sleep@2x"
    assert slot_class("h200-pool", 0.5, []) == "h200-pool"
    assert slot_class("", 0.5, [SleepRunner("m", RESNET, 8, 100)]) == "sleep@0.5x"
    device = jax.devices()[0]  # "cpu" here; on a GPU "NVIDIA H200", where str(device) is "cuda:0" for any model
    assert jax_device_class() == device.device_kind


def test_a_slow_sleep_agent_sleeps_and_publishes_its_scaled_profile_under_its_class() -> None:
    agent = Agent(config('{"speed": 0.5}'), "a")
    agent.load()
    runner = agent.runners["m"]
    assert runner.duration_s(10) == pytest.approx(2 * (1082 * 10 + 5204) / 1e6)
    assert runner.profile.device == agent.slot_class == "sleep@0.5x"
    assert runner.profile.forward_mean_us[9] > 2 * (1082 * 10 + 5204)  # plus the agent's own cost per request
    assert {s.device for s in agent.info().slots} == {"sleep@0.5x"} and agent.status().device == "sleep@0.5x"
    assert Agent(config('{"slot_class": "slow"}'), "a").info().slots[0].device == "slow"


def test_a_speed_is_refused_on_an_agent_that_runs_a_real_model_and_must_be_positive() -> None:
    with pytest.raises(ValueError, match="speed applies to sleep models only"):
        config('{"speed": 0.5}', kind="mlp")
    assert config('{"speed": 1.0}', kind="mlp").agents[0].speed == 1.0
    with pytest.raises(msgspec.ValidationError):
        config('{"speed": 0}')


def test_the_merged_spec_keeps_the_slowest_overall_and_per_class() -> None:
    merged = classed_spec([("fast", spec("fast")), ("slow", spec("slow", 0.5)), ("fast", spec("fast", 0.9))])
    assert sorted(merged.class_profiles) == ["fast", "slow"]
    assert merged.spec.profile.forward_mean_us == merged.class_profiles["slow"].forward_mean_us
    assert merged.class_profiles["fast"].forward_mean_us == spec("fast", 0.9).profile.forward_mean_us
    config_ = merged.model_config()
    assert config_.profile is merged.spec.profile and config_.slo_ns == 100_000_000
    assert classed_spec([("fast", msgspec.structs.replace(spec("fast"), profile=None))]) is None


def test_a_slot_is_planned_safely_by_its_class_or_by_a_slowest_profile_that_covers_it() -> None:
    held = classed_spec([("fast", spec("fast")), ("slow", spec("slow", 0.5))]).model_config()
    assert plans_safely(held, "slow", spec("slow", 0.4).profile)  # a known class: its profile
    assert plans_safely(held, "mid", spec("mid", 0.75).profile)  # unknown, but the slowest covers it
    assert not plans_safely(held, "slower", spec("slower", 0.25).profile)  # it would be planned too fast


def test_a_slot_joins_only_when_every_held_model_covers_its_class() -> None:
    held = {"m": classed_spec([("fast", spec("fast"))]).model_config()}
    assert claimable_class({"m": spec("fast")}, held) == "fast"
    assert claimable_class({"m": None}, held) is None  # its agent has not published the model yet
    assert claimable_class({"m": spec("slow", 0.5)}, held) is None  # slower than anything the core has
    assert claimable_class({"m": spec("quick", 2.0)}, held) == "quick"  # the slowest profile covers it
    assert claimable_class({"m": spec("slow", 0.5), "n": None}, {}) == "slow"  # holding nothing
    assert claimable_class({"m": None}, {}) is None


def test_status_shows_each_slot_class() -> None:
    agents = [AgentStatus(agent_id=a, device=cls, compile_count={},
                          slots=[SlotStatus(slot_id=f"{a}-s0", models=["m"], plans_queued=0, executions=0)])
              for a, cls in (("fast", "sleep"), ("slow", "sleep@0.5x"), ("gpu", "NVIDIA H100 80GB HBM3"))]
    table = format_status([], agents)
    header = next(line for line in table.splitlines() if line.startswith("slot "))
    assert "class" in header
    assert "sleep@0.5x" in table and "NVIDIA H100 80… " in table


class FakeState:
    """The state bucket's `get` over what agents published (`profiles.<model>.<agent>`)."""

    def __init__(self, published: dict[str, ModelSpec]) -> None:
        self.published = published

    async def get(self, key: str) -> SimpleNamespace:
        if key not in self.published:
            raise KeyNotFoundError
        return SimpleNamespace(value=msgspec.json.encode(self.published[key]))


class FakeShard:
    """What the follower reads and calls on its shard; `refresh_model` as the service does it."""

    def __init__(self, config: ClusterConfig, held: dict[str, ModelConfig], slots: set[str]) -> None:
        self.config, self.model_configs, self._slots = config, held, slots
        self.slot_models = config.slot_models()
        self.metrics = SimpleNamespace(assignment_steps=dict.fromkeys(ASSIGNMENT_STEPS, 0))
        self.refreshed: list[list[str]] = []

    def agent_of_slot(self, slot: str) -> str:
        return self.config.agent_of_slot(slot)

    def usable_slots(self) -> set[str]:
        return self._slots

    async def refresh_model(self, classed: ClassedSpec) -> None:
        self.model_configs[classed.spec.name] = classed.model_config()
        self.refreshed.append(sorted(classed.class_profiles))


async def slot_class_of(slot: str, held: dict[str, ModelConfig], published: dict[str, ModelSpec]) -> FakeShard:
    two = msgspec.convert({"models": [{"name": "m", "kind": RESNET, "slo_ms": 100}], "shards": [{"id": "s"}],
                           "agents": [{"id": "fast", "slots": [{"id": "f0", "models": ["m"]}]},
                                      {"id": "slow", "speed": 0.5, "slots": [{"id": "s0", "models": ["m"]}]}]},
                          ClusterConfig)
    shard = FakeShard(two, held, {"f0"})
    follower = AssignmentFollower.__new__(AssignmentFollower)
    follower.shard, follower.buckets = shard, SimpleNamespace(state=FakeState(published))
    shard.found = await follower._slot_class(slot)
    return shard


@pytest.mark.asyncio
async def test_a_slower_class_that_joins_later_has_the_held_model_profiles_read_again() -> None:
    """The model joined with the fast class only; the slow agent published later. Its slot is
    claimed only after the model's profiles were read again with both classes."""
    held = {"m": classed_spec([("sleep", spec("sleep"))]).model_config()}
    both = {"profiles.m.fast": spec("sleep"), "profiles.m.slow": spec("sleep@0.5x", 0.5)}
    shard = await slot_class_of("s0", dict(held), both)
    assert shard.found == "sleep@0.5x" and shard.refreshed == [["sleep", "sleep@0.5x"]]
    assert shard.metrics.assignment_steps["refresh_model"] == 1
    shard = await slot_class_of("s0", dict(held), {"profiles.m.fast": spec("sleep")})  # not published yet
    assert shard.found is None and shard.refreshed == []
    shard = await slot_class_of("f0", dict(held), both)  # a known class: nothing to read again
    assert shard.found == "sleep" and shard.refreshed == []
