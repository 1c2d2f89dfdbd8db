"""Model specs for scheduling: what the agents report about a model, merged to the slowest
profile among the slots that run it (reference §2.2) and, for a mixed fleet (issue 16), to the
slowest per slot class. Used at start-up (static shards ask the agents) and by the follower
(coordinated shards read the profiles bucket).

The core cannot change a model's profiles once it holds the model, so the shell keeps one rule:
a slot and a model meet in the core only when the profiles the core got for the model cover the
slot's class (`plans_safely`), never with a guess."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import msgspec
import nats

from schemas.codec import msgpack_decoder
from schemas.model import ModelSpec
from schemas.plan import AgentInfo
from schemas.profile import ModelProfile
from shard.core.config import ModelConfig

agent_info_decoder = msgpack_decoder(AgentInfo)


class ClassedSpec(msgspec.Struct, frozen=True):
    """A model's spec whose profile is the slowest over every slot class, and the slowest profile
    of each class; all made monotone (reference §2.2), as the core plans with them."""

    spec: ModelSpec
    class_profiles: dict[str, ModelProfile]

    def model_config(self) -> ModelConfig:
        return ModelConfig(name=self.spec.name, slo_ns=int(self.spec.slo_ms * 1e6), profile=self.spec.profile,
                           class_profiles=self.class_profiles)


def slowest_spec(specs: Iterable[ModelSpec]) -> ModelSpec | None:
    """The first spec that has a profile, with the slowest profile among all that have one;
    None when none has (its agents are still compiling and profiling it)."""
    chosen: ModelSpec | None = None
    profile: ModelProfile | None = None
    for spec in specs:
        if spec.profile is None:
            continue
        chosen = chosen or spec
        profile = spec.profile if profile is None else profile.merge_slowest(spec.profile)
    return None if chosen is None else msgspec.structs.replace(chosen, profile=profile)


def classed_spec(published: Iterable[tuple[str, ModelSpec]]) -> ClassedSpec | None:
    """(slot class, spec) as agents published them -> the merged spec; None when none has a
    profile yet."""
    pairs = [(cls, spec) for cls, spec in published if spec.profile is not None]
    slowest = slowest_spec(spec for _cls, spec in pairs)
    if slowest is None:
        return None
    classes: dict[str, ModelProfile] = {}
    for cls, spec in pairs:
        classes[cls] = classes[cls].merge_slowest(spec.profile) if cls in classes else spec.profile
    return ClassedSpec(msgspec.structs.replace(slowest, profile=slowest.profile.monotone()),
                       {cls: classes[cls].monotone() for cls in sorted(classes)})


def plans_safely(config: ModelConfig, slot_class: str, published: ModelProfile) -> bool:
    """Whether the core, holding `config`, plans a slot of `slot_class` (whose agent published
    `published`) no faster than it runs: the class has its own profile, or the slowest profile
    (what the core falls back on) is already at least as slow. Agents of one class are taken as
    alike, as devices of one kind are: a second agent of a known class is not re-checked."""
    if slot_class in config.class_profiles:
        return True
    merged = config.profile.merge_slowest(published.monotone()).monotone()
    fields = ("forward_mean_us", "forward_std_us", "pre_mean_us", "pre_std_us", "post_mean_us", "post_std_us")
    return all(getattr(merged, f) == getattr(config.profile, f) for f in fields)


def uncovered(published: Mapping[str, ModelSpec | None], held: Mapping[str, ModelConfig]) -> list[str]:
    """The held models whose profiles in the core do not cover what an agent published for them
    (its class joined after they did): their profiles must be read again before its slot joins."""
    return [name for name, spec in published.items()
            if spec is not None and spec.profile is not None and name in held
            and not plans_safely(held[name], spec.profile.device, spec.profile)]


def claimable_class(published: Mapping[str, ModelSpec | None], held: Mapping[str, ModelConfig]) -> str | None:
    """The class a slot joins the core with, from what its agent published per model (`published`:
    each model the shard holds, or holding none, each the slot runs); None while it would be
    planned with a guess: a held model this agent has no profile for yet, or one whose profiles in
    the core do not cover the agent's class. An agent has one class; a mix trusts none."""
    classes: set[str] = set()
    for name, spec in published.items():
        config = held.get(name)
        if spec is None or spec.profile is None:
            if config is not None:
                return None
            continue
        if config is not None and not plans_safely(config, spec.profile.device, spec.profile):
            return None
        classes.add(spec.profile.device)
    return classes.pop() if len(classes) == 1 else None


async def agent_infos(nc: nats.NATS, prefix: str, agent_ids: set[str], timeout_s: float) -> dict[str, AgentInfo]:
    """Each agent's info (its slots and model specs), asking until all answer or the time is up."""
    infos: dict[str, AgentInfo] = {}
    deadline = asyncio.get_running_loop().time() + timeout_s
    while agent_ids - set(infos):
        for agent_id in sorted(agent_ids - set(infos)):
            try:
                msg = await nc.request(f"{prefix}.agent.{agent_id}.info", b"", timeout=1.0)
                infos[agent_id] = agent_info_decoder.decode(msg.data)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"agents {sorted(agent_ids - set(infos))} did not answer") from None
                await asyncio.sleep(0.5)
    return infos
