"""Handing a request back to its model's subject when the component holding it no longer owns
the model or the slot (a move between shards). It is sent as a request on the holder's own
connection, retried while no shard is subscribed (the new owner may be a moment away), and the
answer is forwarded to the client's inbox, so the client gets exactly one reply either way."""

from __future__ import annotations

import asyncio
import time

import nats

from runtime.connect import hand_back_request
from schemas.status import (
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_HANDED_BACK,
    HEADER_REQUEST_ID,
    Status,
    error_headers,
)

RETRY_S = 0.1
GRACE_S = 0.5  # past the request's deadline, for the new owner's own drop reply to arrive


def hand_back_headers(content_type: str, client_request_id: str, deadline_unix_ns: int) -> dict[str, str]:
    """The request as its client sent it, with its deadline so the new owner keeps the same one,
    marked as a hand-back so the new owner does not take it for a client's repeat."""
    headers = {HEADER_CONTENT_TYPE: content_type, HEADER_HANDED_BACK: "1"}
    if client_request_id:
        headers[HEADER_REQUEST_ID] = client_request_id
    if deadline_unix_ns:
        headers[HEADER_DEADLINE] = f"{deadline_unix_ns / 1e6:.3f}"
    return headers


async def hand_back(nc: nats.NATS, subject: str, body: bytes, headers: dict[str, str], reply: str) -> None:
    budget_s = 5.0
    if HEADER_DEADLINE in headers:
        budget_s = float(headers[HEADER_DEADLINE]) / 1e3 - time.time() + GRACE_S
    deadline = time.monotonic() + budget_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            answer = await hand_back_request(nc, subject, body, timeout=remaining, headers=headers)
        except nats.errors.NoRespondersError:
            await asyncio.sleep(RETRY_S)
            continue
        except nats.errors.TimeoutError:
            break
        await nc.publish(reply, answer.data, headers=answer.headers)
        return
    await nc.publish(reply, b"", headers=error_headers(Status.UNAVAILABLE, "unavailable: the model is moving",
                                                       headers.get(HEADER_REQUEST_ID)))


def start_hand_back(nc: nats.NATS, subject: str, body: bytes, headers: dict[str, str], reply: str,
                    tasks: set[asyncio.Task]) -> None:
    """In the background; `tasks` keeps a reference until it is done."""
    task = asyncio.get_running_loop().create_task(hand_back(nc, subject, body, headers, reply))
    tasks.add(task)
    task.add_done_callback(tasks.discard)


async def finish_hand_backs(tasks: set[asyncio.Task], timeout_s: float = 10.0) -> None:
    """Wait for hand-backs in flight before a process leaves: each is the one path to its
    client's reply, and ends by its request's deadline (plus GRACE_S) at the latest."""
    if tasks:
        await asyncio.wait(set(tasks), timeout=timeout_s)
