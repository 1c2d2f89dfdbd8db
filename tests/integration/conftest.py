"""A real nats-server on loopback per test module, and in-process agents and shards."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gpu_agent.agent import Agent
from runtime.client import SymphonyClient
from runtime.clock import Clock
from runtime.cluster_config import load_cluster_config
from runtime.nats_server import NatsServer
from shard.service.shard import ShardService

SLEEP_CONFIG = """
subject_prefix = "symphony"
[[models]]
name = "resnet_sleep"
kind = "sleep:1082,5204"
slo_ms = 100
batch_size_max = 128
[[models]]
name = "fast_sleep"
kind = "sleep:20,500"
slo_ms = 30
batch_size_max = 64
[[agents]]
id = "sleep-0"
slots = [{id = "s0", models = ["resnet_sleep", "fast_sleep"]}, {id = "s1", models = ["resnet_sleep", "fast_sleep"]},
         {id = "s2", models = ["resnet_sleep", "fast_sleep"]}, {id = "s3", models = ["resnet_sleep", "fast_sleep"]}]
[[shards]]
id = "shard-0"
models = ["resnet_sleep", "fast_sleep"]
slots = ["s0", "s1", "s2", "s3"]
"""

JAX_CONFIG = """
subject_prefix = "symphony"
[[models]]
name = "mlp"
kind = "mlp"
slo_ms = 200
batch_size_max = 8
[[agents]]
id = "jax-0"
slots = [{id = "j0", models = ["mlp"]}]
[[shards]]
id = "shard-jax"
models = ["mlp"]
slots = ["j0"]
"""


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    with NatsServer() as server:
        yield server


@contextlib.asynccontextmanager
async def running_cluster(config_text: str, url: str, tmp: Path, agent_clock: Clock | None = None,
                          ) -> AsyncIterator[tuple[SymphonyClient, list, list]]:
    """The cluster in `config_text`, in this process; `agent_clock` runs every agent on it (as on
    another host, e.g. with its wall clock off)."""
    path = tmp / "cluster.toml"
    path.write_text(config_text)
    config = load_cluster_config(path)
    agents = [Agent(config, a.id, clock=agent_clock) for a in config.agents]
    shards = [ShardService(config, s.id) for s in config.shards]
    for agent in agents:
        agent.load()
        await agent.start(url)
    for shard in shards:
        await shard.start(url, agents_timeout_s=10)
    client = await SymphonyClient.connect(url)
    try:
        yield client, shards, agents
    finally:
        await client.close()
        for shard in shards:
            await shard.stop()
        for agent in agents:
            await agent.stop()
