"""Issue 16, live side: what names a slot's class (the agent's device), sleep agents at a speed,
and the shard's rule that a slot and a model meet in the core only with a profile that covers
the slot's class."""

from __future__ import annotations

import msgspec
import pytest

from gpu_agent.agent import Agent
from gpu_agent.runners import SleepRunner, jax_device_class, sleep_class, slot_class
from runtime.cluster_config import ClusterConfig
from runtime.status import format_status
from schemas.model import ModelSpec, TensorSpec
from schemas.profile import profile_from_sleep_spec
from schemas.status_report import AgentStatus, SlotStatus
from shard.service.specs import claimable_class, classed_spec, plans_safely
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
    assert jax_device_class() == "cpu"  # the tests run JAX on the CPU; on a GPU: "NVIDIA H200"


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
