"""The metrics endpoints serve every documented metric with sane values after a short run."""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.nats_server import free_port
from tests.integration.conftest import SLEEP_CONFIG, running_cluster

pytestmark = pytest.mark.asyncio
DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def scrape(url: str) -> dict[str, list]:
    """Sample name -> samples, from the Prometheus text a metrics URL answers."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))


async def scrape_settled(shard_port: int, agent_port: int, reports: int, timeout_s: float = 10.0) -> tuple[dict, dict]:
    """Both scrapes once the shard has handled `reports` requests' completion reports and the
    agent has counted as many replies. The client may have its replies before that: the agent
    publishes the report first, but the shard and the client read from different connections, so
    a busy shard may count the last batch a moment after the client saw it (seen once in a fresh
    clone's make test: failed_total 0 instead of 1)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        shard, agent = scrape(f"http://127.0.0.1:{shard_port}/metrics"), scrape(f"http://127.0.0.1:{agent_port}/metrics")
        handled = (value(shard, "symphony_shard_requests_succeeded_total")
                   + value(shard, "symphony_shard_requests_failed_total"))
        replied = value(agent, "symphony_agent_replies_total")
        if (handled >= reports and replied >= reports) or asyncio.get_running_loop().time() > deadline:
            return shard, agent
        await asyncio.sleep(0.05)


def documented(prefix: str) -> list[str]:
    return sorted(set(re.findall(rf"`({prefix}[a-z_]+)`", DOC.read_text())))


async def test_every_documented_metric_is_served_with_sane_values(nats_server, tmp_path) -> None:
    shard_port, agent_port = free_port(), free_port()
    config = SLEEP_CONFIG.replace('id = "sleep-0"', f'id = "sleep-0"\nmetrics_port = {agent_port}').replace(
        'id = "shard-0"', f'id = "shard-0"\nmetrics_port = {shard_port}')
    async with running_cluster(config, nats_server.url, tmp_path) as (client, _shards, _agents):
        body = b'{"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1]}]}'
        results = await asyncio.gather(*(client.infer("resnet_sleep", body, content_type="application/json")
                                         for _ in range(200)))
        assert all(r.ok for r in results)
        await client.infer("resnet_sleep", b"bad", content_type="application/json")
        shard, agent = await scrape_settled(shard_port, agent_port, reports=201)
        refused = await client.infer("resnet_sleep", body, slo_ms=-1, content_type="application/json")
        gathered = await client.statistics(wait_s=10.0)  # every member answers: no waiting out the window
        one = await client.statistics("fast_sleep", wait_s=10.0)
    assert refused.status == 400  # answered by the shard, at the door
    assert_statistics(gathered, agent, one)
    for name in documented("symphony_shard_"):
        histogram = [k for k in shard if k.startswith(name + "_")]
        assert name in shard or histogram, f"shard does not serve {name}"
    for name in documented("symphony_agent_"):
        if name == "symphony_agent_device_memory_bytes":
            continue  # only where JAX exposes device memory (not the CPU build)
        assert name in agent or any(k.startswith(name + "_") for k in agent), f"agent does not serve {name}"

    assert value(shard, "symphony_shard_requests_received_total", model="resnet_sleep") == 201
    dispatched = value(shard, "symphony_shard_requests_total", model="resnet_sleep", outcome="dispatched")
    assert dispatched == 201  # the bad body is only found out by the agent
    batches = value(shard, "symphony_shard_inference_exec_count_total", model="resnet_sleep")
    assert 1 <= batches < 201
    assert value(shard, "symphony_shard_requests_succeeded_total", model="resnet_sleep") == 200
    assert value(shard, "symphony_shard_requests_failed_total", model="resnet_sleep") == 1
    assert value(shard, "symphony_shard_slots_owned") == 4
    assert value(shard, "symphony_shard_pending_requests") == 0
    assert value(shard, "symphony_shard_target_batch_size", model="resnet_sleep") >= 1
    assert value(agent, "symphony_agent_items_total", model="resnet_sleep") == 200
    assert value(agent, "symphony_agent_replies_total", status="400") == 1
    assert value(agent, "symphony_agent_compile_count", model="resnet_sleep") == 0  # sleep models compile nothing
    assert value(agent, "symphony_agent_compute_seconds_total") > 0


def assert_statistics(gathered, agent: dict, one) -> None:
    """Triton's statistics after 200 requests answered 200, one 400 from the agent (bad body) and
    one from the shard (bad header): everything the agents measured, and both failures."""
    assert gathered.answered == ["agent.sleep-0", "shard.shard-0"] and gathered.missing == []
    stats = {m.name: m for m in gathered.response.model_stats}
    assert sorted(stats) == ["fast_sleep", "resnet_sleep"]
    assert [m.name for m in one.response.model_stats] == ["fast_sleep"]
    assert stats["fast_sleep"].inference_count == 0 and stats["fast_sleep"].batch_stats == []
    resnet = stats["resnet_sleep"]
    s = resnet.inference_stats
    assert resnet.inference_count == 200 and s.success.count == 200
    assert resnet.execution_count == value(agent, "symphony_agent_executions_total", model="resnet_sleep")
    assert 1 <= resnet.execution_count < 200
    assert s.fail.count == 2
    for duration in (s.success, s.queue, s.compute_input, s.compute_infer, s.compute_output):
        assert duration.count == 200 and duration.ns > 0
    assert s.success.ns >= s.compute_infer.ns  # end to end includes execution
    assert sum(b.batch_size * b.compute_infer.count for b in resnet.batch_stats) == 200
    assert sum(b.compute_infer.count for b in resnet.batch_stats) == resnet.execution_count
    assert all(b.compute_infer.ns > 0 and b.compute_output.count == b.compute_infer.count for b in resnet.batch_stats)
    assert abs(resnet.last_inference - time.time() * 1000) < 60_000


async def test_shards_and_agents_are_discoverable_through_the_services_api(nats_server, tmp_path) -> None:
    from runtime.status import discover, format_status, gather_status

    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        await client.infer("resnet_sleep", b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}',
                           content_type="application/json")
        pings = await discover(client.nc, "symphony-shard")
        assert [p["metadata"]["shard_id"] for p in pings] == ["shard-0"]
        shards, agents, _coordinators = await gather_status(nats_server.url)
    (shard,) = shards
    assert shard.slots_owned == ["s0", "s1", "s2", "s3"]
    assert {m.name: m.received for m in shard.models} == {"resnet_sleep": 1, "fast_sleep": 0}
    (agent,) = agents
    assert sum(slot.executions for slot in agent.slots) == 1
    table = format_status(shards, agents)
    assert "shard-0" in table and "resnet_sleep" in table and "sleep-0" in table


async def test_a_statistics_gather_waits_for_named_members_and_reports_the_missing(nats_server) -> None:
    """Members named by an answer are waited for (here one answers late); one that never answers
    is reported missing once the wait is over; with no member at all the gather ends at once."""
    import nats

    from runtime.stats import ModelCounters, encode_parts, gather_statistics, serve_stats, snapshots

    counters = {"m": ModelCounters()}
    counters["m"].failed(1, 10, time.time_ns())
    nc = await nats.connect(nats_server.url)
    try:
        named = (["shard.a", "agent.late", "agent.gone"], False)
        await serve_stats(nc, "t", "shard.a", lambda: named, lambda model: snapshots(counters, model))

        async def answer_late(msg) -> None:
            await asyncio.sleep(0.3)
            for data in encode_parts("agent.late", [], False, snapshots(counters, None), nc.max_payload):
                await nc.publish(msg.reply, data)

        await nc.subscribe("t.stats", cb=answer_late)
        await nc.flush()
        started = time.monotonic()
        gathered = await gather_statistics(nc, "t", wait_s=1.0, quiet_s=0.05)
        assert time.monotonic() - started >= 1.0
        assert gathered.answered == ["agent.late", "shard.a"] and gathered.missing == ["agent.gone"]
        assert gathered.response.model_stats[0].inference_stats.fail.count == 2
        started = time.monotonic()
        nobody = await gather_statistics(nc, "nobody", wait_s=5.0)
        assert nobody.answered == [] and nobody.response.model_stats == []
        assert time.monotonic() - started < 2.0  # NATS's no responders, not the whole wait
    finally:
        await nc.close()
