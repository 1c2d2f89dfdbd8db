"""A whole coordinated cluster with NATS users on (LocalCluster's default): two clients are
served, the operator sees and rescales it, a client cannot, and no role ever trips a permission
(the server logs every violation; the roles log the ones they are told of)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import nats
import pytest

from runtime.client import SymphonyClient
from runtime.cluster import LocalCluster
from runtime.status import gather_status
from tests.factories import SLEEP_KINDS, cluster_toml
from tests.integration.test_metrics import scrape

pytestmark = pytest.mark.asyncio

CONFIG = cluster_toml(
    {"resnet_sleep": (SLEEP_KINDS["resnet_sleep"], 100, 64), "fast_sleep": (SLEEP_KINDS["fast_sleep"], 40, 64)},
    {"agent-a": ["a0", "a1"], "agent-b": ["b0", "b1"]}, coordinators=1)
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'


async def test_a_cluster_with_users_serves_two_clients_and_only_the_operator_manages_it(tmp_path: Path) -> None:
    path = tmp_path / "cluster.toml"
    path.write_text(CONFIG)
    cluster = LocalCluster(path, log_dir=tmp_path / "logs", clients=("alice", "bob"))
    await cluster.start(timeout_s=60)
    alice = bob = None
    try:
        assert cluster.auth is not None and cluster.server is not None
        alice = await SymphonyClient.connect(cluster.url, creds=cluster.creds_path("alice"))
        bob = await SymphonyClient.connect(cluster.url, creds=cluster.creds_path("bob"))
        for client in (alice, bob):
            result = await client.infer("resnet_sleep", BODY, content_type="application/json", timeout_s=5)
            assert result.ok, result.reason
        await a_standard_client_logs_in_with_the_seed_file(cluster)

        assert await gather_status(cluster.url, creds=cluster.creds_path("alice")) == ([], [], [])  # refused
        shards, agents, coordinators = await gather_status(cluster.url, creds=cluster.creds_path("operator"))
        assert ([s.shard_id for s in shards], len(agents), len(coordinators)) == (["shard-0"], 2, 1)
        # Every role serves its metrics on a port of its own (LocalCluster's default), named in its status.
        urls = {s.metrics_url: "symphony_shard_" for s in shards} | {a.metrics_url: "symphony_agent_" for a in agents}
        urls |= {c.metrics_url: "symphony_coordinator_" for c in coordinators}
        assert len(urls) == 4 and all(u.startswith("http://127.0.0.1:") for u in urls), urls
        for url, prefix in urls.items():
            assert any(name.startswith(prefix) for name in scrape(url)), url

        async def steady(client: SymphonyClient, model: str, seconds: float) -> list[int]:
            statuses = []
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            pending = []
            while loop.time() < end:
                pending.append(asyncio.ensure_future(
                    client.infer(model, BODY, content_type="application/json", timeout_s=6)))
                await asyncio.sleep(0.01)
            for result in await asyncio.gather(*pending):
                statuses.append(result.status)
            return statuses

        async def rescale() -> None:  # moves models between shards: drains, hand-backs, claims
            await asyncio.sleep(0.5)
            assert await cluster.scale_shards(2) == ["shard-0", "shard-1"]
            await asyncio.sleep(1.5)
            assert await cluster.scale_shards(1) == ["shard-0"]

        served_alice, served_bob, _ = await asyncio.gather(
            steady(alice, "resnet_sleep", 6.0), steady(bob, "fast_sleep", 6.0), rescale())
        for statuses in (served_alice, served_bob):
            assert all(s in (200, 503, 504) for s in statuses), sorted(set(statuses))  # every request answered
            assert statuses.count(200) >= 0.9 * len(statuses)

        violations = [line for line in cluster.server.log().splitlines() if "Violation" in line]
        alice_key = cluster.auth.nkeys["alice"]  # the server names a user by its public key
        assert violations and all(f'"$G/nkey:{alice_key}"' in line for line in violations)  # alice's status attempt
        for log in (tmp_path / "logs").glob("*.log"):
            assert "permissions violation" not in log.read_text().lower(), log.name
    finally:
        for client in (alice, bob):
            if client is not None:
                await client.close()
        cluster.stop()
    assert not cluster.auth.run_dir.exists()  # the cluster's keys go with it


async def a_standard_client_logs_in_with_the_seed_file(cluster: LocalCluster) -> None:
    """What docs/protocol.md tells an outside client: nats.py's own options, the `.nk` seed file
    `symphony up` prints and the client's inbox prefix, nothing of ours. The servers' configs
    `symphony up` wrote hold no secret."""
    assert cluster.auth is not None
    seed_file = cluster.auth.seed_path("bob")
    nc = await nats.connect(cluster.url, nkeys_seed=str(seed_file), inbox_prefix="_INBOX_client.bob")
    try:
        reply = await nc.request("symphony.meta", b"", timeout=5)
        assert sorted(json.loads(reply.data)["models"]) == ["fast_sleep", "resnet_sleep"]
    finally:
        await nc.close()
    configs = list(cluster.auth.run_dir.glob("nats-server-*.conf"))
    assert configs
    for config in configs:
        text = config.read_text()
        assert "password" not in text and not re.search(r"\bS[UAONC][A-Z2-7]{50,}", text)
        assert not any(seed in text for seed in cluster.auth.seeds.values())
        assert cluster.auth.nkeys["bob"] in text
