"""The messaging limit for the shard throughput benchmark: a bare nats-py forwarder that takes
the same requests (same subject, queue group) and forwards them in batches of reply subjects to
a bare agent, which answers each one with a fixed 200 reply. No scheduling, no validation.

    python -m load.bench.bare_forwarder forwarder|agent NATS_URL SUBJECT
"""

from __future__ import annotations

import asyncio
import signal
import sys

import msgspec
import nats

BATCH_MAX = 64
FLUSH_S = 0.001
REPLY_BODY = b'{"model_name":"zero","outputs":[{"name":"y","shape":[1,1],"datatype":"FP32","data":[1.0]}]}'
REPLY_HEADERS = {"Symphony-Status": "200", "Content-Type": "application/json", "Symphony-Batch-Size": "1"}


async def forwarder(url: str, subject: str) -> None:
    nc = await nats.connect(url, name="bare-forwarder")
    batch: list[tuple[str, bytes]] = []

    async def flush() -> None:
        nonlocal batch
        if batch:
            out, batch = batch, []
            await nc.publish("bare.agent", msgspec.msgpack.encode(out))

    async def on_request(msg) -> None:  # noqa: ANN001
        batch.append((msg.reply, msg.data))
        if len(batch) >= BATCH_MAX:
            await flush()

    await nc.subscribe(subject, queue=subject, cb=on_request, pending_msgs_limit=10_000_000)

    async def ticker() -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            await flush()

    task = asyncio.create_task(ticker())
    await _until_signalled()
    task.cancel()
    await nc.close()


async def agent(url: str) -> None:
    nc = await nats.connect(url, name="bare-agent")

    async def on_batch(msg) -> None:  # noqa: ANN001
        for reply, _body in msgspec.msgpack.decode(msg.data):
            await nc.publish(reply, REPLY_BODY, headers=REPLY_HEADERS)

    await nc.subscribe("bare.agent", cb=on_batch, pending_msgs_limit=10_000_000)
    await _until_signalled()
    await nc.close()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    role, url = sys.argv[1], sys.argv[2]
    asyncio.run(forwarder(url, sys.argv[3]) if role == "forwarder" else agent(url))
