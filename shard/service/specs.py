"""Model specs for scheduling: what the agents report about a model, merged to the slowest
profile among the slots that run it (reference §2.2). Used at start-up (static shards ask the
agents) and by the follower (coordinated shards read the profiles bucket)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import msgspec
import nats

from schemas.codec import msgpack_decoder
from schemas.model import ModelSpec
from schemas.plan import AgentInfo
from schemas.profile import ModelProfile

agent_info_decoder = msgpack_decoder(AgentInfo)


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
