"""A mixed fleet on a real nats-server (issue 16): a fast and a slow sleep slot class in one
shard. `symphony status` shows each slot's class, every request gets one reply in time at a
modest load, and each class's agent really runs at its class's speed."""

from __future__ import annotations

import asyncio
from collections import Counter

import nats
import pytest

from gpu_agent.agent import Agent
from runtime.status import format_status, gather_status
from tests.integration.conftest import running_cluster
from tests.integration.test_serving import reply_ledger

pytestmark = pytest.mark.asyncio

SLOPE_US, INTERCEPT_US, SLO_MS = 1082, 5204, 100
# The slow slot sorts first in the preference order (schemas.control.preference_order); the
# per-slot core still sends work to the fast class first, so the slow slot runs only what the fast
# one cannot take in time.
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


async def send_bursts(nc: nats.NATS, bursts: int, size: int, every_s: float) -> tuple[Counter[str], Counter[str]]:
    """`bursts` bursts of `size` requests, one every `every_s`: each burst is more than the fast
    slot fits in one batch within the SLO, so the slow slot takes the rest (and, planned with its
    own profile, a smaller batch)."""
    inbox, replies, statuses = await reply_ledger(nc)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for burst in range(bursts):
        delay = started + burst * every_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        for i in range(burst * size, (burst + 1) * size):
            await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.{i}")
        await nc.flush()
    total = bursts * size
    deadline = loop.time() + 10
    while sum(replies.values()) < total and loop.time() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # any duplicate would arrive in this time
    return replies, statuses


async def test_a_fast_and_a_slow_class_each_run_at_their_speed_and_status_shows_them(nats_server, tmp_path) -> None:
    async with running_cluster(MIXED_CONFIG, nats_server.url, tmp_path) as (client, _shards, agents):
        shards, statuses_of_agents, _coordinators = await gather_status(nats_server.url)
        # Bursts of 100 every 200 ms: the fast slot fits about 80 of a burst in one batch within
        # the SLO, the slow slot (planned at half speed) the rest. Planning both with the slowest
        # profile fits 40 + 40 and drops a fifth of each burst.
        bursts, size = 12, 100
        total = bursts * size
        replies, statuses = await send_bursts(client.nc, bursts, size, every_s=0.2)
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
    # Each slot is planned with its own class's profile: the fast slot's window holds more.
    assert mean_batch["sleep-fast"] > mean_batch["sleep-slow"], mean_batch
