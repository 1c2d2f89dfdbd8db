"""Policy registry: every policy by name, built from the same model list and constants."""

from __future__ import annotations

import math
from collections.abc import Callable

import msgspec

from shard.core.baselines.nexus import NexusPolicy
from shard.core.baselines.shepherd import ShepherdPolicy
from shard.core.baselines.triton import TritonPolicy
from shard.core.config import CoreConfig, DropPolicy, ModelConfig, SchedulableCondition
from shard.core.policy import Policy
from shard.core.symphony import SymphonyPolicy

PolicyFactory = Callable[[list[ModelConfig], CoreConfig], Policy]


def _symphony(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return SymphonyPolicy(models, config, name="symphony")


def _eager(models: list[ModelConfig], config: CoreConfig) -> Policy:
    """Reference §4.3: Symphony's core with the immediate condition and drop-timeout."""
    eager = msgspec.structs.replace(
        config, schedulable=SchedulableCondition.IMMEDIATELY, drop=DropPolicy.DROP_TIMEOUT
    )
    return SymphonyPolicy(models, eager, name="eager")


def _triton(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return TritonPolicy(models, config)


def _clockwork(models: list[ModelConfig], config: CoreConfig) -> Policy:
    """Largest SLO-feasible batch when a slot frees, no preemption: Shepherd with lambda = inf
    (reference §4.3; our inference, not the authors'), dropping expired heads."""
    return ShepherdPolicy(models, name="clockwork", preempt_lambda=math.inf, fixed=True,
                          queue_len_max=config.queue_len_max, resp_ns=config.resp_ns,
                          slot_profiles=config.slot_profiles)


def _shepherd(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return ShepherdPolicy(models, name="shepherd", queue_len_max=config.queue_len_max, resp_ns=config.resp_ns,
                          slot_profiles=config.slot_profiles)


def _shepherd_fixed(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return ShepherdPolicy(models, name="shepherd-fixed", fixed=True, queue_len_max=config.queue_len_max,
                          resp_ns=config.resp_ns, slot_profiles=config.slot_profiles)


def _nexus(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return NexusPolicy(models, name="nexus", resp_ns=config.resp_ns, slot_profiles=config.slot_profiles)


def _nexus_warm(models: list[ModelConfig], config: CoreConfig) -> Policy:
    return NexusPolicy(models, name="nexus-warm", warm=True, resp_ns=config.resp_ns,
                       slot_profiles=config.slot_profiles)


# Symphony+ tuned values (issue 3; sensitivity in BENCHMARKS.md). Tuned on the built-in
# workloads only.
PLUS = {
    "drop_beta": 0.6,
    "early_dispatch": True,
    "early_utilization_min": 0.8,
    "early_cost_slack": 0.10,
    "reserve_horizon_ns": 3_000_000,
    "overload_demand_min": 1.0,
}


def plus_config(config: CoreConfig, **overrides: object) -> CoreConfig:
    return msgspec.structs.replace(config, **{**PLUS, **overrides})


def _symphony_plus(models: list[ModelConfig], config: CoreConfig) -> Policy:
    """Deferral with a gentler drop rule and contention-aware early dispatch with reservation.
    Values already changed from the faithful defaults in `config` are kept (tuning sweeps)."""
    faithful = CoreConfig()
    chosen = {k: getattr(config, k) for k in PLUS if getattr(config, k) != getattr(faithful, k)}
    return SymphonyPolicy(models, plus_config(config, **chosen), name="symphony-plus")


POLICIES: dict[str, PolicyFactory] = {
    "symphony-plus": _symphony_plus,
    "symphony": _symphony,
    "eager": _eager,
    "triton": _triton,
    "clockwork": _clockwork,
    "shepherd": _shepherd,
    "shepherd-fixed": _shepherd_fixed,
    "nexus": _nexus,
    "nexus-warm": _nexus_warm,
}
BASELINES = ["eager", "triton", "clockwork", "shepherd", "shepherd-fixed", "nexus", "nexus-warm"]

DEFAULT_POLICY = "symphony-plus"


def make_policy(name: str, models: list[ModelConfig], config: CoreConfig | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    return factory(models, config or CoreConfig())
