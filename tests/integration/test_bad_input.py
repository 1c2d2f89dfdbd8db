"""The bad-input corpus (load/bench/bad_input.py) against a live sleep cluster: every case gets
exactly the answer the protocol promises (one 400/413 with a reason, no responders for subjects
no shard serves, a refusal in the client for names that are not a subject token, nothing for
requests without a reply subject and garbage on internal subjects), and afterwards valid requests
on every slot are still answered 200."""

from __future__ import annotations

import asyncio

import nats
import pytest

from load.bench.bad_input import VALID, Expect, corpus, report, run_corpus, still_serving
from runtime.kv import list_members, open_buckets, read_assignment, undecodable
from schemas.control import ASSIGNMENT_KEY, ShardHeartbeat, encode
from tests.integration.conftest import SLEEP_CONFIG, running_cluster


def test_the_corpus_is_large_and_names_each_case_once() -> None:
    cases = corpus()
    assert len(cases) >= 40
    assert len({c.name for c in cases}) == len(cases)
    assert {c.expect for c in cases} == set(Expect)


@pytest.mark.asyncio
async def test_every_bad_input_gets_its_one_answer_and_the_service_keeps_serving(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        outcomes = await run_corpus(client.nc, corpus(shard="shard-0"), slots=["s0", "s1", "s2", "s3"])
        serving = await still_serving(client.nc, "fast_sleep", requests=32)
    failed = [o for o in outcomes if not o.passed]
    assert not failed, report(failed, serving)
    assert serving == {200: 32}, f"valid requests after the corpus: statuses {serving}"


@pytest.mark.asyncio
async def test_a_batch_of_large_valid_bodies_is_answered_and_keeps_its_slot(nats_server, tmp_path) -> None:
    """Bodies each within the limit can add up past NATS max_payload in one plan: those batches
    are answered 413 with the reason, the slot stays, and the service goes on serving."""
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, shards, _agents):
        body = VALID[:-1] + b" " * 850_000 + b"}"  # valid JSON, under the shard's 900,000-byte limit
        count = client.nc.max_payload // len(body) + 2  # together more than one message may carry
        results = await asyncio.gather(*(client.infer("resnet_sleep", body, content_type="application/json")
                                         for _ in range(count)))
        statuses = {r.status for r in results}
        assert statuses <= {200, 413}, {r.reason for r in results}
        assert all("max_payload" in r.reason for r in results if r.status == 413)
        assert shards[0].metrics.slots_lost == 0
        after = await client.infer("resnet_sleep", VALID, content_type="application/json")
        assert after.status == 200


@pytest.mark.asyncio
async def test_undecodable_kv_entries_are_skipped_and_counted_not_raised(nats_server) -> None:
    """Heartbeats and the assignment come from other processes through JetStream KV: one that
    does not decode is logged, counted and read as absent, never raised into a role's loop."""
    nc = await nats.connect(nats_server.url)
    try:
        buckets = await open_buckets(nc, heartbeat_ttl_s=30, lease_s=30)
        deep = b"[" * 50_000 + b"]" * 50_000
        await buckets.members.put("shard.good", encode(ShardHeartbeat(shard_id="good")))
        await buckets.members.put("shard.dotted", b'{"shard_id": "a.b"}')
        await buckets.members.put("agent.deep", b'{"agent_id": "x", "device": "d", "slots": [], "u": ' + deep + b"}")
        await buckets.state.put(ASSIGNMENT_KEY, b"\xff\xfe")
        before = sum(undecodable.values())
        shards, agents = await list_members(buckets.members)
        assignment, revision = await read_assignment(buckets.state)
        assert list(shards) == ["good"] and agents == {}
        assert assignment is None and revision > 0  # the leader overwrites it at this revision
        assert sum(undecodable.values()) == before + 3
        for key in ("shard.good", "shard.dotted", "agent.deep"):
            await buckets.members.delete(key)
        await buckets.state.delete(ASSIGNMENT_KEY)
    finally:
        await nc.close()
