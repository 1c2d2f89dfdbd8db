"""Policy registry: every policy by name, built from the same model list and constants."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

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


POLICIES: dict[str, PolicyFactory] = {
    "symphony": _symphony,
    "eager": _eager,
}

DEFAULT_POLICY = "symphony"


def make_policy(name: str, models: list[ModelConfig], config: CoreConfig | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}") from None
    return factory(models, config or CoreConfig())
