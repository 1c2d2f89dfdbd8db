"""An open-loop NATS request sender: publishes each request at its planned time with a reply
subject under one wildcard inbox, and records every reply (status, latency, batch size).

One subscription and no future per request keep the sender cheap enough for benchmarks; it
tracks its own lag behind the schedule so a run whose sender fell behind says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import nats
import numpy as np

from runtime.connect import connect_options, resolve_creds, server_list
from schemas.status import (
    HEADER_BATCH_SIZE,
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_REASON,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    HEADER_STATUS,
)


@dataclass
class SendResult:
    sent_s: np.ndarray  # planned send time of each request (seconds from start)
    lag_s: np.ndarray  # actual - planned
    latency_s: np.ndarray  # reply - actual send; nan without a reply
    status: np.ndarray  # int; 0 without a reply
    batch_size: np.ndarray
    duplicates: int
    replies: np.ndarray | None = None  # replies per request: the ledger (exactly one each is the contract)
    second_replies: list[tuple[int, str, str]] = field(default_factory=list)  # (request, status, reason)
    extra: dict[str, float] = field(default_factory=dict)


async def send_schedule(
    url: str,
    times_s: np.ndarray,
    subjects: list[str],
    bodies: list[bytes],
    *,
    content_type: str = "application/json",
    slo_ms: list[float] | None = None,
    drain_s: float = 2.0,
    start_wall: float | None = None,
    progress: Callable[[dict], None] | None = None,
    progress_every_s: float = 1.0,
    precise: bool = True,
    ledger: bool = False,
) -> SendResult:
    """Send request i to `subjects[i]` with body `bodies[i]` at `times_s[i]` after start.

    `start_wall` (time.time()) lines several sender processes up on one schedule; `progress`
    gets running counts about once a second. With `ledger`, request i carries id `i` and a
    deadline (its send time plus its SLO, `slo_ms` or 1 s), as the reply contract describes."""
    nc = await nats.connect(server_list(url), name="symphony-sender", pending_size=64 * 1024 * 1024,
                            flusher_queue_size=65536, **connect_options(resolve_creds(url, None, "client"), url))
    n = len(times_s)
    actual = np.full(n, np.nan)
    replied = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    batch = np.zeros(n, dtype=np.int32)
    replies = np.zeros(n, dtype=np.int32)
    second: list[tuple[int, str, str]] = []
    duplicates = 0
    inbox = nc.new_inbox()
    prefix_len = len(inbox) + 1

    async def on_reply(msg) -> None:  # noqa: ANN001
        nonlocal duplicates
        i = int(msg.subject[prefix_len:])
        replies[i] += 1
        if status[i]:
            duplicates += 1
            headers = msg.headers or {}
            second.append((i, headers.get(HEADER_STATUS, "?"), headers.get(HEADER_REASON, "")))
            return
        replied[i] = time.perf_counter()
        headers = msg.headers or {}
        status[i] = int(headers.get(HEADER_STATUS, headers.get("Status", 500)))
        batch[i] = int(headers.get(HEADER_BATCH_SIZE, 0))

    await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.flush()
    shared_headers: dict[tuple[str, float], dict[str, str]] = {}

    def headers_for(i: int) -> dict[str, str]:
        if ledger:
            budget_ms = slo_ms[i] if slo_ms is not None else 1000.0
            headers = {HEADER_CONTENT_TYPE: content_type, HEADER_REQUEST_ID: str(i),
                       HEADER_DEADLINE: f"{time.time() * 1000 + budget_ms:.3f}"}
            if slo_ms is not None:
                headers[HEADER_SLO_MS] = f"{slo_ms[i]:g}"
            return headers
        key = (content_type, slo_ms[i] if slo_ms is not None else 0.0)
        headers = shared_headers.get(key)
        if headers is None:
            headers = {HEADER_CONTENT_TYPE: content_type}
            if slo_ms is not None:
                headers[HEADER_SLO_MS] = f"{slo_ms[i]:g}"
            shared_headers[key] = headers
        return headers

    if start_wall is not None:
        await asyncio.sleep(max(0.0, start_wall - time.time()))
    cpu_started = time.process_time()
    start = time.perf_counter()
    next_progress = progress_every_s
    i = 0
    while i < n:
        now = time.perf_counter() - start
        if progress is not None and now >= next_progress:
            next_progress += progress_every_s
            progress(_counts(i, status, replied, actual, start))
        if times_s[i] > now:
            # Sleep until about a millisecond before the next send, then yield in a tight loop:
            # asyncio's sleep wakes up to a millisecond late, which would show up as lag.
            delay = times_s[i] - now
            if precise:
                await asyncio.sleep(min(delay - 0.001, 0.05) if delay > 0.0015 else 0)
            else:  # cheaper: sends up to about a millisecond late
                await asyncio.sleep(min(delay, 0.05))
            continue
        while i < n and times_s[i] <= now:  # everything due goes out now
            actual[i] = time.perf_counter()
            await nc.publish(subjects[i], bodies[i], reply=f"{inbox}.{i}", headers=headers_for(i))
            i += 1
        await asyncio.sleep(0)
    await nc.flush()
    send_cpu_s = time.process_time() - cpu_started
    deadline = time.perf_counter() + drain_s
    while time.perf_counter() < deadline and np.count_nonzero(status) < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await nc.close()
    if progress is not None:
        progress(_counts(n, status, replied, actual, start))
    return SendResult(
        sent_s=np.asarray(times_s), lag_s=(actual - start) - np.asarray(times_s),
        latency_s=replied - actual, status=status, batch_size=batch, duplicates=duplicates, replies=replies,
        second_replies=second,
        extra={"cpu_s": time.process_time() - cpu_started, "send_cpu_s": send_cpu_s,
               "start_wall": time.time() - (time.perf_counter() - start)},
    )


def _counts(sent: int, status: np.ndarray, replied: np.ndarray, actual: np.ndarray, start: float) -> dict:
    answered = status[:sent]
    ok = answered == 200
    latencies = (replied[:sent] - actual[:sent])[ok]
    return {"elapsed_s": time.perf_counter() - start, "sent": sent, "replied": int(np.count_nonzero(answered)),
            "ok": int(np.count_nonzero(ok)),
            "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies.size else float("nan")}
