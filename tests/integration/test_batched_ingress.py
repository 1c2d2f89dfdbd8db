"""Batched ingress on a live cluster (docs/protocol.md, Batched ingress): one message carries many
requests, each answered exactly once on its own reply subject; bad items get their own errors
and the rest of the batch is served."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np
import pytest

from schemas.status import HEADER_REQUEST_ID, HEADER_STATUS, Status
from tests.integration.conftest import SLEEP_CONFIG, running_cluster

pytestmark = pytest.mark.asyncio

GOOD = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}]}
WRONG_NAME = {"inputs": [{"name": "y", "shape": [1, 1], "datatype": "FP32", "data": [1.5]}]}


async def test_infer_many_answers_each_request_once_and_bad_items_alone(nats_server, tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        x = np.full((1, 1), 2.0, np.float32)
        inputs: list = [{"x": x}] * 40
        inputs[7] = json.dumps(WRONG_NAME).encode()  # the agent's 400: a wrong input name
        # A generous SLO: a stall of a loaded test machine must not turn a 200 into a 504.
        results = await client.infer_many("resnet_sleep", inputs, request_ids=[f"r{i}" for i in range(40)],
                                          content_type="application/json", slo_ms=1000)
        assert [r.status for r in results] == [Status.BAD_REQUEST if i == 7 else Status.OK for i in range(40)], \
            [(r.status, r.reason) for r in results if r.status != Status.OK]
        assert [r.headers[HEADER_REQUEST_ID] for r in results] == [f"r{i}" for i in range(40)]
        assert max(r.batch_size for r in results) > 1, [r.batch_size for r in results]  # batched as usual
        each = await client.infer_many("resnet_sleep", [{"x": x}] * 5, batched_replies=False, slo_ms=1000)
        assert [r.status for r in each] == [Status.OK] * 5, [(r.status, r.reason) for r in each]
        unknown = await client.infer_many("no_such_model", [{"x": x}] * 3)
        assert [r.status for r in unknown] == [Status.UNKNOWN_MODEL] * 3


async def test_raw_json_batch_routes_each_reply_and_refuses_bad_items_alone(nats_server, tmp_path) -> None:
    """What any NATS client can send: explicit and default reply subjects, bad values, a
    malformed item, a reply that is no subject; and a message that is not a batch at all."""
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        nc = client.nc
        inbox = nc.new_inbox()
        replies: Counter[str] = Counter()
        statuses: dict[str, str] = {}

        async def on_reply(msg) -> None:
            replies[msg.subject] += 1
            statuses[msg.subject] = (msg.headers or {}).get(HEADER_STATUS, "?")

        await nc.subscribe(f"{inbox}.>", cb=on_reply)
        items = [
            {"body": GOOD},  # -> <batch reply>.0
            {"body": GOOD, "reply": f"{inbox}.own", "id": "mine"},
            {"body": GOOD, "slo_ms": -5},  # shard: 400 (the SLO must be positive)
            {"body": GOOD, "deadline_ms": 1000.0},  # long past: 504 expired
            5,  # not an item: 400 on its default subject
            {"body": GOOD, "reply": "bad reply"},  # not a subject: 400 on its default subject
            {"body": WRONG_NAME},  # agent: 400
            {"body": GOOD, "slo_ms": 80},
        ]
        await nc.publish("symphony.infer_many.fast_sleep", json.dumps({"requests": items}).encode(),
                         reply=f"{inbox}.b", headers={"Content-Type": "application/json"})
        await nc.publish("symphony.infer_many.fast_sleep", b"{not json", reply=f"{inbox}.junk")
        expected = {f"{inbox}.b.0": "200", f"{inbox}.own": "200", f"{inbox}.b.2": "400", f"{inbox}.b.3": "504",
                    f"{inbox}.b.4": "400", f"{inbox}.b.5": "400", f"{inbox}.b.6": "400", f"{inbox}.b.7": "200",
                    f"{inbox}.junk": "400"}
        for _ in range(100):
            if len(replies) >= len(expected):
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # time for any second reply to show
        assert statuses == expected
        assert set(replies.values()) == {1}


async def test_batched_replies_carry_every_200_of_a_batch_in_one_message_and_errors_alone(nats_server,
                                                                                         tmp_path) -> None:
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (client, _shards, _agents):
        nc = client.nc
        inbox = nc.new_inbox()
        messages: list = []

        async def on_reply(msg) -> None:
            messages.append(msg)

        await nc.subscribe(f"{inbox}.>", cb=on_reply)
        items = [{"body": GOOD, "id": f"r{i}"} for i in range(6)] + [{"body": WRONG_NAME}, {"body": GOOD, "slo_ms": 0}]
        await nc.publish("symphony.infer_many.resnet_sleep", json.dumps({"requests": items}).encode(),
                         reply=f"{inbox}.b",
                         headers={"Content-Type": "application/json", "Symphony-Replies": "batched"})
        for _ in range(100):
            if sum(len(json.loads(m.data)) if m.subject == f"{inbox}.b" else 1 for m in messages) >= 8:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        batched = [m for m in messages if m.subject == f"{inbox}.b"]
        alone = {m.subject: m.headers[HEADER_STATUS] for m in messages if m.subject != f"{inbox}.b"}
        entries = [e for m in batched for e in json.loads(m.data)]
        assert all(m.headers["Symphony-Replies"] == "batched" for m in batched)
        assert len(batched) < 6  # the six 200s came in fewer messages (one per plan they ran in)
        assert sorted(e["index"] for e in entries) == list(range(6))
        assert {e["headers"]["Symphony-Request-Id"] for e in entries} == {f"r{i}" for i in range(6)}
        assert all(e["headers"]["Symphony-Status"] == "200" and e["body"]["outputs"] for e in entries)
        assert alone == {f"{inbox}.b.6": "400", f"{inbox}.b.7": "400"}
