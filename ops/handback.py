"""Handing a request back to its model's subject when the component holding it no longer owns
the model or the slot (a move between shards). It is sent as a request on the holder's own
connection, retried while no shard is subscribed (the new owner may be a moment away), and the
answer is forwarded to the client's inbox, so the client gets exactly one reply either way."""

from __future__ import annotations

import asyncio
import time

import nats

from schemas.status import Status, error_headers

RETRY_S = 0.1


async def hand_back(nc: nats.NATS, subject: str, body: bytes, headers: dict[str, str], reply: str,
                    budget_s: float = 5.0) -> None:
    deadline = time.monotonic() + budget_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            answer = await nc.request(subject, body, timeout=remaining, headers=headers)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(RETRY_S)
            continue
        except nats.errors.TimeoutError:
            break
        await nc.publish(reply, answer.data, headers=answer.headers)
        return
    await nc.publish(reply, b"", headers=error_headers(Status.UNAVAILABLE, "unavailable: the model is moving",
                                                       headers.get("Symphony-Request-Id")))


def start_hand_back(nc: nats.NATS, subject: str, body: bytes, headers: dict[str, str], reply: str,
                    tasks: set[asyncio.Task]) -> None:
    """In the background; `tasks` keeps a reference until it is done."""
    task = asyncio.get_running_loop().create_task(hand_back(nc, subject, body, headers, reply))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
