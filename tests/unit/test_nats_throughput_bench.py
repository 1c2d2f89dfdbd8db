"""load/bench/nats_throughput.py and the core-NATS cluster it runs on: three servers without
JetStream start, route a message between servers, and a cell's row adds up."""

import asyncio

import nats
from nats.aio.msg import Msg

from load.bench.nats_throughput import CellPlan, summarise
from runtime.nats_server import NatsCluster


def test_a_three_server_cluster_without_jetstream_routes_a_message_between_servers() -> None:
    async def publish_on_first_receive_on_last(cluster: NatsCluster) -> bytes:
        first, last = await nats.connect(cluster.servers[0].url), await nats.connect(cluster.servers[2].url)
        try:
            got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

            async def on_message(msg: Msg) -> None:
                if not got.done():
                    got.set_result(msg.data)

            await last.subscribe("bench.route", cb=on_message)
            await last.flush()
            for _ in range(100):  # the subscription's interest reaches the other servers shortly
                await first.publish("bench.route", b"across")
                await first.flush()
                done, _ = await asyncio.wait({got}, timeout=0.05)
                if done:
                    break
            return await asyncio.wait_for(got, 1.0)
        finally:
            await first.close()
            await last.close()

    with NatsCluster(3, jetstream=False) as cluster:
        assert len({s.port for s in cluster.servers}) == 3
        assert all("jetstream" not in s.config_text() for s in cluster.servers)
        assert asyncio.run(publish_on_first_receive_on_last(cluster)) == b"across"


def test_a_request_reply_row_counts_each_request_as_two_messages_delivered() -> None:
    plan = CellPlan(topology="single", shape="reqrep", payload_bytes=100, seconds=2.0, publishers=0, subscribers=0,
                    requesters=1, responders=1, window=10)
    results = [{"kind": "req", "replies": 20_000, "cpu_s": 1.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0},
               {"kind": "resp", "answered": 20_000, "cpu_s": 0.5}]
    row = summarise(plan, results, [0.4], busy_cores=1.0)
    assert row["requests_per_s"] == 10_000
    assert row["messages_per_s"] == 20_000
    assert row["server_us_per_message"] == 0.2 / 20_000 * 1e6
    assert row["cores"]["others"] == 1.0 - (0.2 + 0.5 + 0.25)
