"""The reply contract (docs/reliability.md) on a real nats-server: deadlines travel with a
request and expired work is never started; a repeated id within its deadline is answered once."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.status import HEADER_DEADLINE, HEADER_REASON, HEADER_REQUEST_ID, HEADER_STATUS
from tests.integration.conftest import SLEEP_CONFIG, running_cluster
from tests.integration.test_serving import reply_ledger

pytestmark = pytest.mark.asyncio
BODY = b'{"inputs":[{"name":"x","shape":[1,1],"datatype":"FP32","data":[1]}]}'


async def test_a_request_past_its_deadline_is_answered_504_and_never_run(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, shards, agents):
        past = f"{time.time() * 1000 - 5:.3f}"
        reply = await client.nc.request("symphony.infer.resnet_sleep", BODY, timeout=5,
                                        headers={HEADER_DEADLINE: past, HEADER_REQUEST_ID: "late-1"})
        assert reply.headers[HEADER_STATUS] == "504"
        assert "expired" in reply.headers[HEADER_REASON]
        assert reply.headers[HEADER_REQUEST_ID] == "late-1"
        assert shards[0].metrics.outcomes[("resnet_sleep", "expired")] == 1
        assert sum(slot.executions for slot in agents[0].slots.values()) == 0


async def test_a_deadline_tighter_than_the_slo_is_kept(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        soon = f"{time.time() * 1000 + 30:.3f}"  # 30 ms: well inside the 100 ms SLO
        started = time.perf_counter()
        reply = await client.nc.request("symphony.infer.resnet_sleep", BODY, timeout=5, headers={HEADER_DEADLINE: soon})
        took_ms = (time.perf_counter() - started) * 1000
        # Served within the deadline (plus the reply's trip), or dropped if the slots cannot make it.
        assert reply.headers[HEADER_STATUS] in ("200", "504")
        if reply.headers[HEADER_STATUS] == "200":
            assert took_ms < 40, f"served after {took_ms:.1f} ms, past the 30 ms deadline it was given"


async def test_a_bad_deadline_header_is_a_400(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        for value in ("soon", "-1", "nan", "1e400"):
            reply = await client.nc.request("symphony.infer.resnet_sleep", BODY, timeout=5,
                                            headers={HEADER_DEADLINE: value})
            assert reply.headers[HEADER_STATUS] == "400", value


async def test_a_repeated_id_within_its_deadline_is_answered_once(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, shards, _agents):
        nc = client.nc
        inbox, replies, statuses = await reply_ledger(nc)
        for k in range(5):  # the same id five times, from five inboxes, inside its 100 ms SLO
            await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.{k}",
                             headers={HEADER_REQUEST_ID: "same-id"})
        await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.other",
                         headers={HEADER_REQUEST_ID: "other-id"})
        await asyncio.sleep(0.5)
        assert sum(replies.values()) == 2, replies
        assert replies[f"{inbox}.0"] == 1 and replies[f"{inbox}.other"] == 1
        assert shards[0].metrics.outcomes[("resnet_sleep", "duplicate")] == 4
        # After its deadline the id is free again: a client's retry after its timeout is a new request.
        await nc.publish("symphony.infer.resnet_sleep", BODY, reply=f"{inbox}.again",
                         headers={HEADER_REQUEST_ID: "same-id"})
        await asyncio.sleep(0.5)
        assert replies[f"{inbox}.again"] == 1 and statuses["200"] == 3
