"""An agent whose wall clock is off from its shard's, on a real nats-server (docs/reliability.md
§1.1): every request still gets exactly one reply; what it gets depends on how far off and
which way. The arithmetic is in tests/unit/test_agent_decisions.py; this shows it live.

SLEEP_CONFIG: resnet_sleep has a 100 ms SLO, the slot grace is the default 2 s, and the agent
withholds replies from 250 ms before the shard may declare a slot lost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from gpu_agent.agent import Agent
from ops.roles import agent_clock
from runtime.clock import MonotonicClock
from runtime.cluster_config import load_cluster_config
from schemas.plan import PLAN_VERSION, BatchPlan, PlanRequest, ReportStatus, plan_encoder, report_decoder
from schemas.status import HEADER_REASON, HEADER_STATUS
from tests.integration.conftest import SLEEP_CONFIG, running_cluster

pytestmark = pytest.mark.asyncio
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'
MS = 1_000_000


async def send_and_count(nc, total: int = 200,
                         rate: float = 400.0) -> tuple[Counter[str], Counter[tuple[str, str]]]:
    """Open loop to resnet_sleep; replies per request, and per (status, reason), once all are in."""
    replies: Counter[str] = Counter()
    outcomes: Counter[tuple[str, str]] = Counter()
    inbox = nc.new_inbox()

    async def on_reply(msg) -> None:
        replies[msg.subject] += 1
        outcomes[msg.headers.get(HEADER_STATUS, "?"), msg.headers.get(HEADER_REASON, "")] += 1

    await nc.subscribe(f"{inbox}.*", cb=on_reply)
    for i in range(total):
        await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.{i}")
        await asyncio.sleep(1 / rate)
    deadline = time.monotonic() + 8
    while len(replies) < total and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # a second reply would arrive in this time
    assert len(replies) == total, f"{total - len(replies)} requests unanswered"
    assert max(replies.values()) == 1, "a request was answered twice"
    return replies, outcomes


def agent_total(agent: Agent, name: str) -> float:
    return sum(agent.metrics.registry.get_sample_value(name, {"slot": s}) or 0 for s in agent.slots)


def statuses(outcomes: Counter[tuple[str, str]]) -> Counter[str]:
    return Counter({status: n for (status, _reason), n in outcomes.items()})


@pytest.mark.parametrize("offset_ms", [-200, 1])
async def test_an_agent_clock_off_by_less_than_the_tolerance_changes_nothing(nats_server, tmp_path,
                                                                              offset_ms: int) -> None:
    clock = MonotonicClock(wall_offset_ns=offset_ms * MS)
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path, clock) as (client, _shards, agents):
        _replies, outcomes = await send_and_count(client.nc)
        assert statuses(outcomes)["200"] >= 0.95 * 200, outcomes
        assert agent_total(agents[0], "symphony_agent_withheld_plans_total") == 0


async def test_an_agent_clock_ahead_past_the_requests_slack_expires_them_at_the_agent(nats_server, tmp_path) -> None:
    # 50 ms ahead: a request the shard dispatches in its last 50 ms reads as expired on arrival.
    clock = MonotonicClock(wall_offset_ns=50 * MS)
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path, clock) as (client, _shards, agents):
        _replies, outcomes = await send_and_count(client.nc)
        expired = outcomes["504", "expired before the batch could start"]
        assert expired > 0 and set(statuses(outcomes)) <= {"200", "504"}, outcomes
        assert agent_total(agents[0], "symphony_agent_expired_items_total") == expired
        assert agent_total(agents[0], "symphony_agent_withheld_plans_total") == 0


async def test_an_agent_clock_ahead_past_the_slot_grace_withholds_every_plan_and_the_shard_answers(
        nats_server, tmp_path) -> None:
    # 3 s ahead: every plan reads as past its lost moment (2 s grace) on arrival.
    clock = MonotonicClock(wall_offset_ns=3_000 * MS)
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path, clock) as (client, shards, agents):
        _replies, outcomes = await send_and_count(client.nc)
        assert outcomes == Counter({("504", "dropped: the slot reached it too late"): 200}), outcomes
        assert agent_total(agents[0], "symphony_agent_withheld_plans_total") > 0
        assert sum(slot.executions for slot in agents[0].slots.values()) == 0
        assert shards[0].metrics.outcomes[("resnet_sleep", "lost")] == 200


async def run_one_late_plan(url: str, tmp_path, offset_ms: int) -> tuple[ReportStatus, list[str]]:
    """This test as the shard: one plan whose lost moment passed 50 ms ago (its shard may have
    answered it already) to an agent `offset_ms` off; the report's status and the replies."""
    path = tmp_path / "cluster.toml"
    path.write_text(SLEEP_CONFIG)
    agent = Agent(load_cluster_config(path), "sleep-0", clock=MonotonicClock(wall_offset_ns=offset_ms * MS))
    agent.load()
    await agent.start(url)
    nc = agent.nc  # any connection will do; the agent's own is at hand
    reports: asyncio.Queue[ReportStatus] = asyncio.Queue()
    replies: list[str] = []

    async def on_report(msg) -> None:
        await reports.put(report_decoder.decode(msg.data).status)

    async def on_reply(msg) -> None:
        replies.append(msg.headers.get(HEADER_STATUS, "?"))

    try:
        await nc.subscribe("symphony.shard.test.done", cb=on_report)
        inbox = nc.new_inbox()
        await nc.subscribe(inbox, cb=on_reply)
        now = time.time_ns()
        plan = BatchPlan(version=PLAN_VERSION, plan_id=1, shard_id="test", epoch=0, slot_id="s0",
                         model="resnet_sleep", requests=[PlanRequest(1, inbox, BODY, "application/json",
                                                                     deadline_unix_ns=now + 1_000 * MS)],
                         exec_at_ns=0, deadline_us=0, deadline_unix_ns=now + 1_000 * MS,
                         lost_after_unix_ns=now - 50 * MS)
        await nc.publish("symphony.slot.s0.plan", plan_encoder.encode(plan))
        status = await asyncio.wait_for(reports.get(), timeout=5)
        await asyncio.sleep(0.3)
        return status, replies
    finally:
        await agent.stop()


async def test_an_agent_clock_behind_by_less_than_the_margin_withholds_a_plan_past_its_lost_moment(
        nats_server, tmp_path) -> None:
    status, replies = await run_one_late_plan(nats_server.url, tmp_path, offset_ms=-100)
    assert status is ReportStatus.WITHHELD and replies == []


async def test_an_agent_clock_behind_by_more_than_the_margin_answers_a_plan_its_shard_may_have_answered(
        nats_server, tmp_path) -> None:
    # Beyond the tolerance: the agent answers 200 although its shard could have answered 503
    # already; with a shard that had declared the slot lost, that would be a second reply.
    status, replies = await run_one_late_plan(nats_server.url, tmp_path, offset_ms=-1_000)
    assert status is ReportStatus.DONE and replies == ["200"]


async def test_the_offset_knob_is_read_at_the_agents_entry_point() -> None:
    ahead = agent_clock({"SYMPHONY_CLOCK_OFFSET_MS": "1500"}).wall_ns() - time.time_ns()
    assert 1_499 * MS < ahead < 1_600 * MS
    assert agent_clock({}).wall_offset_ns == 0
