"""A mixed fleet on a real nats-server (issue 16): a fast and a slow sleep slot class in one
shard. `symphony status` shows each slot's class, every request gets one reply in time at a
modest load, and each class's agent really runs at its class's speed."""

from __future__ import annotations

import asyncio
from collections import Counter

import msgspec
import nats
import pytest

from gpu_agent.agent import Agent
from runtime.status import format_status, gather_status
from shard.service.specs import classed_spec
from tests.integration.conftest import running_cluster
from tests.integration.test_serving import reply_ledger

pytestmark = pytest.mark.asyncio

SLOPE_US, INTERCEPT_US, SLO_MS = 1082, 5204, 100
# The slow slot sorts first, so the shard prefers it (schemas.control.preference_order) and the
# fast one takes what it cannot: both classes run batches whatever profile plans them.
MIXED_CONFIG = f"""
subject_prefix = "symphony"
[[models]]
name = "resnet_sleep"
kind = "sleep:{SLOPE_US},{INTERCEPT_US}"
slo_ms = {SLO_MS}
batch_size_max = 128
[[agents]]
id = "sleep-slow"
speed = 0.5
slots = [{{id = "slot-1-slow", models = ["resnet_sleep"]}}]
[[agents]]
id = "sleep-fast"
slots = [{{id = "slot-2-fast", models = ["resnet_sleep"]}}]
[[shards]]
id = "shard-0"
models = ["resnet_sleep"]
slots = ["slot-1-slow", "slot-2-fast"]
"""
SPEEDS = {"sleep-slow": 0.5, "sleep-fast": 1.0}
BODY = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}'


def executed(agent: Agent) -> tuple[float, float, float]:
    """(batches, requests, compute seconds) its one slot ran, from its Prometheus counters."""
    (slot,) = agent.slots
    registry, labels = agent.metrics.registry, {"slot": slot, "model": "resnet_sleep"}
    return tuple(registry.get_sample_value(f"symphony_agent_{name}_total", labels) or 0.0
                 for name in ("executions", "items", "compute_seconds"))


async def send(nc: nats.NATS, total: int, rate: float) -> tuple[Counter[str], Counter[str]]:
    inbox, replies, statuses = await reply_ledger(nc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(total):
        delay = started + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.{i}")
    deadline = loop.time() + 10
    while sum(replies.values()) < total and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # any duplicate would arrive in this time
    return replies, statuses


async def test_a_fast_and_a_slow_class_each_run_at_their_speed_and_status_shows_them(nats_server, tmp_path) -> None:
    async with running_cluster(MIXED_CONFIG, nats_server.url, tmp_path) as (client, _shards, agents):
        shards, statuses_of_agents, _coordinators = await gather_status(nats_server.url)
        # 500 req/s: more than the slow slot serves within the SLO alone, well within both.
        total = 1500
        replies, statuses = await send(client.nc, total, rate=500.0)
    assert {a.agent_id: a.device for a in statuses_of_agents} == {"sleep-fast": "sleep", "sleep-slow": "sleep@0.5x"}
    rows = {line.split()[0]: line.split()[3] for line in format_status(shards, statuses_of_agents).splitlines()
            if line.startswith("slot-")}
    assert rows == {"slot-1-slow": "sleep@0.5x", "slot-2-fast": "sleep"}
    assert len(replies) == total and max(replies.values()) == 1, "a request went unanswered or twice"
    assert set(statuses) <= {"200", "504"}, statuses
    assert statuses["200"] >= 0.95 * total, statuses
    mean_batch = {}
    for agent in agents:
        batches, requests, compute_s = executed(agent)
        assert batches > 0, f"{agent.entry.id} ran nothing"
        mean_batch[agent.entry.id] = requests / batches
        # A linear profile: the mean batch's time is the mean time a batch took, at the class's speed.
        expected_s = (SLOPE_US * requests / batches + INTERCEPT_US) / SPEEDS[agent.entry.id] / 1e6
        assert expected_s * 0.99 <= compute_s / batches <= expected_s + 0.010, (agent.entry.id, compute_s / batches)
    # Every batch on the slow class fit the SLO at the slow speed: the slowest profile plans it.
    slow_max = max(b for b in range(1, 129) if 2 * (SLOPE_US * b + INTERCEPT_US) <= SLO_MS * 1000)
    assert agents[0].entry.id == "sleep-slow"
    assert agents[0].slots["slot-1-slow"].executions > 0 and mean_batch["sleep-slow"] <= slow_max
    if mean_batch["sleep-slow"] > mean_batch["sleep-fast"]:
        # Until the core plans each slot with its class's profile (issue 16 part 1), it plans both
        # with the slowest and the fast slot's batches are not larger. Then this is an assertion.
        pytest.xfail(f"per-slot planning: slow batches {mean_batch['sleep-slow']:.1f} > fast "
                     f"{mean_batch['sleep-fast']:.1f}")


async def test_a_model_given_new_class_profiles_under_load_still_answers_every_request_once(nats_server,
                                                                                            tmp_path) -> None:
    """What a coordinated shard does when a slower class joins after a model (follower.py): the
    model leaves the core and comes back with the new profiles; what it had queued is handed back
    to its own subject and served."""
    async with running_cluster(MIXED_CONFIG, nats_server.url, tmp_path) as (client, shards, _agents):
        shard = shards[0]
        held = shard.model_configs["resnet_sleep"]
        slower = msgspec.structs.replace(held.class_profiles["sleep@0.5x"].at_speed(0.5), device="sleep@0.25x")
        fresh = classed_spec([(cls, msgspec.structs.replace(shard.specs["resnet_sleep"], profile=p))
                              for cls, p in [*held.class_profiles.items(), ("sleep@0.25x", slower)]])

        async def refresh() -> None:
            await asyncio.sleep(1.0)
            while not shard.pending:  # requests queued in the core, none sent yet: they are handed back
                await asyncio.sleep(0.001)
            await shard.refresh_model(fresh)

        total = 600
        (replies, statuses), _ = await asyncio.gather(send(client.nc, total, rate=300.0), refresh())
        handed_back = shard.metrics.outcomes["resnet_sleep", "handed_back"]
    assert sorted(shard.model_configs["resnet_sleep"].class_profiles) == ["sleep", "sleep@0.25x", "sleep@0.5x"]
    assert len(replies) == total and max(replies.values()) == 1, "a request went unanswered or twice"
    assert set(statuses) <= {"200", "504"}, statuses
    assert statuses["200"] >= 0.9 * total, (statuses, handed_back)
    assert handed_back > 0
