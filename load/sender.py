"""An open-loop NATS request sender: publishes each request at its planned time with a reply
subject under one wildcard inbox, and records every reply (status, latency, batch size).

One subscription and no future per request keep the sender cheap enough for benchmarks; it
tracks its own lag behind the schedule so a run whose sender fell behind says so.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import nats
import numpy as np

from schemas.status import HEADER_BATCH_SIZE, HEADER_CONTENT_TYPE, HEADER_SLO_MS, HEADER_STATUS


@dataclass
class SendResult:
    sent_s: np.ndarray  # planned send time of each request (seconds from start)
    lag_s: np.ndarray  # actual - planned
    latency_s: np.ndarray  # reply - actual send; nan without a reply
    status: np.ndarray  # int; 0 without a reply
    batch_size: np.ndarray
    duplicates: int
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
) -> SendResult:
    """Send request i to `subjects[i]` with body `bodies[i]` at `times_s[i]` after start."""
    nc = await nats.connect(url, name="symphony-sender", pending_size=64 * 1024 * 1024, flusher_queue_size=65536)
    n = len(times_s)
    actual = np.full(n, np.nan)
    replied = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)
    batch = np.zeros(n, dtype=np.int32)
    duplicates = 0
    inbox = nc.new_inbox()
    prefix_len = len(inbox) + 1

    async def on_reply(msg) -> None:  # noqa: ANN001
        nonlocal duplicates
        i = int(msg.subject[prefix_len:])
        if status[i]:
            duplicates += 1
            return
        replied[i] = time.perf_counter()
        headers = msg.headers or {}
        status[i] = int(headers.get(HEADER_STATUS, headers.get("Status", 500)))
        batch[i] = int(headers.get(HEADER_BATCH_SIZE, 0))

    await nc.subscribe(f"{inbox}.*", cb=on_reply, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.flush()
    headers_of = [{HEADER_CONTENT_TYPE: content_type} for _ in range(n)]
    if slo_ms is not None:
        for h, slo in zip(headers_of, slo_ms):
            h[HEADER_SLO_MS] = f"{slo:g}"
    start = time.perf_counter()
    i = 0
    while i < n:
        now = time.perf_counter() - start
        if times_s[i] > now:
            await asyncio.sleep(min(times_s[i] - now, 0.002))
            continue
        while i < n and times_s[i] <= now:  # everything due goes out now
            actual[i] = time.perf_counter()
            await nc.publish(subjects[i], bodies[i], reply=f"{inbox}.{i}", headers=headers_of[i])
            i += 1
        await asyncio.sleep(0)
    await nc.flush()
    deadline = time.perf_counter() + drain_s
    while time.perf_counter() < deadline and np.count_nonzero(status) < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await nc.close()
    return SendResult(
        sent_s=np.asarray(times_s), lag_s=(actual - start) - np.asarray(times_s),
        latency_s=replied - actual, status=status, batch_size=batch, duplicates=duplicates,
    )
