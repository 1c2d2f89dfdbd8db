"""Several sender processes offering one open-loop rate together, so that a throughput benchmark
measures its target and not the load generator: one sender process keeps about 8,000 req/s on
schedule (`generator_rate.py`), and a benchmark that offers more from one process measures the
sender. Each process runs `load.sender.send_schedule` for every n-th request of one uniform
schedule, with its own NATS connection and reply inbox; all start on a common wall-clock instant.

The merged ledger keeps what a verdict needs: statuses, latencies and duplicates of every request,
and each sender's lag behind the common schedule (p50/p99/max, a start after the first sender's
included) and CPU, so a run whose generator fell behind says so instead of passing off the
generator's limit as the target's. This module owns the sender processes only; it never judges
a target.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import time
from dataclasses import dataclass

import numpy as np

from load.sender import SendResult, send_schedule

START_LEAD_S = 1.0  # connect and subscribe before the common start
START_LEAD_PER_SENDER_S = 0.1


@dataclass(frozen=True)
class SenderShare:
    """One process's part of a uniform schedule: requests k, k + n, k + 2n, ... of `rate_rps`."""

    url: str
    rate_rps: float
    seconds: float
    index: int
    senders: int
    subject: str
    body: bytes
    start_wall: float  # time.time() of the common start
    drain_s: float
    precise: bool
    batch: int = 1  # > 1: batched ingress, this process's requests in batches of `batch` (see `_send_share`)
    replies_batched: bool = True  # with batches: their 200s in batched reply messages


@dataclass(frozen=True)
class SenderLedger:
    """What one sender process did: how late its sends went out and what it cost."""

    sent: int
    start_offset_ms: float  # its own start after the first sender's
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    send_cpu_s: float  # CPU while sending (not draining replies)
    cpu_s: float  # CPU in all, replies drained


@dataclass(frozen=True)
class PooledResult:
    """Every request of one rate, merged over the sender processes (order is not kept)."""

    status: np.ndarray  # int; 0 without a reply
    latency_s: np.ndarray  # reply - actual send; nan without a reply
    lag_s: np.ndarray  # actual send - planned, on the common schedule
    batch_size: np.ndarray
    duplicates: int
    senders: list[SenderLedger]


def senders_for(rate_rps: float, sender_rps: float, senders_max: int) -> int:
    """How many processes offer `rate_rps` with each at most `sender_rps` (capped)."""
    return max(1, min(senders_max, math.ceil(rate_rps / sender_rps)))


def _send_share(share: SenderShare) -> tuple[SendResult, float]:
    """Child process: send this share, and say how late it started behind the common start."""
    times_s = np.arange(share.index, int(share.rate_rps * share.seconds), share.senders) / share.rate_rps
    n = len(times_s)
    if share.batch > 1:
        # A batching caller (a frontend) sends each group of `batch` requests when its last one
        # arrived: the group's requests are planned then, so lag still means the sender's.
        times_s = times_s[np.minimum((np.arange(n) // share.batch + 1) * share.batch - 1, n - 1)]
    result = asyncio.run(send_schedule(share.url, times_s, [share.subject] * n, [share.body] * n,
                                       drain_s=share.drain_s, start_wall=share.start_wall, precise=share.precise,
                                       batch_max=share.batch, replies_batched=share.replies_batched))
    return result, result.extra["start_wall"] - share.start_wall


def _ready() -> None:
    """Pool initializer: importing this module (numpy, nats-py) happens now, not in a timed run."""


def _ready_probe(_: int) -> int:
    """Held long enough that each idle worker takes one probe: its initializer has then run."""
    time.sleep(0.2)
    return multiprocessing.current_process().pid or 0


def _ledger(result: SendResult, start_offset_s: float) -> SenderLedger:
    lag_ms = (result.lag_s + start_offset_s) * 1000
    return SenderLedger(
        sent=len(lag_ms), start_offset_ms=start_offset_s * 1000,
        lag_p50_ms=float(np.percentile(lag_ms, 50)), lag_p99_ms=float(np.percentile(lag_ms, 99)),
        lag_max_ms=float(lag_ms.max()), send_cpu_s=result.extra["send_cpu_s"], cpu_s=result.extra["cpu_s"])


def merge(parts: list[tuple[SendResult, float]]) -> PooledResult:
    """One ledger from the senders' own: requests concatenated, each lag on the common schedule.

    Each child measures lag from its own start; adding its start after the first sender's puts
    every lag on one schedule, so a child that started late cannot look punctual. The origin is
    the first actual start, not the planned one: asyncio wakes a millisecond or more late from
    the wait for it, and that shift of the whole schedule changes no rate."""
    first_s = min(late_s for _, late_s in parts)
    return PooledResult(
        status=np.concatenate([r.status for r, _ in parts]),
        latency_s=np.concatenate([r.latency_s for r, _ in parts]),
        lag_s=np.concatenate([r.lag_s + (late_s - first_s) for r, late_s in parts]),
        batch_size=np.concatenate([r.batch_size for r, _ in parts]),
        duplicates=sum(r.duplicates for r, _ in parts),
        senders=[_ledger(r, late_s - first_s) for r, late_s in parts],
    )


class SenderPool:
    """Spawned sender processes, started once (before the target, while the machine is idle) and
    reused for every rate, so no timed run waits for a process to import numpy and nats-py."""

    def __init__(self, url: str, processes: int, *, drain_s: float = 2.0, precise: bool = False) -> None:
        """`precise`: senders spin between sends for sub-millisecond timing. Off by default: a
        spinning sender holds a whole core, which on a small machine is taken from the target."""
        self.url = url
        self.processes = processes
        self.drain_s = drain_s
        self.precise = precise
        self._pool = multiprocessing.get_context("spawn").Pool(processes, initializer=_ready)
        self._pool.map(_ready_probe, range(processes), 1)

    def start_wall_for(self, senders: int) -> float:
        """The common start of a run with `senders` processes, leaving them time to connect."""
        return time.time() + START_LEAD_S + START_LEAD_PER_SENDER_S * senders

    async def send_uniform(self, rate_rps: float, seconds: float, subject: str, body: bytes, *,
                           senders: int, start_wall: float, batch: int = 1,
                           replies_batched: bool = True) -> PooledResult:
        """Offer `rate_rps` evenly spaced requests for `seconds` from `senders` processes; with
        `batch` > 1 each process sends its requests in batch messages of that many."""
        assert 1 <= senders <= self.processes, (senders, self.processes)
        shares = [SenderShare(self.url, rate_rps, seconds, k, senders, subject, body, start_wall,
                              self.drain_s, self.precise, batch, replies_batched) for k in range(senders)]
        # chunksize 1 and idle workers: each share runs in its own process, all at once.
        parts = await asyncio.get_running_loop().run_in_executor(None, self._pool.map, _send_share, shares, 1)
        return merge(parts)

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def __enter__(self) -> SenderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
