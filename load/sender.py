"""An open-loop NATS request sender: publishes each request at its planned time with a reply
subject under one wildcard inbox, and records every reply (status, latency, batch size).

One subscription and no future per request keep the sender cheap enough for benchmarks; it
tracks its own lag behind the schedule so a run whose sender fell behind says so.

With `batch_max` > 1 it uses batched ingress (docs/protocol.md): the requests due at one moment
for one model go out as one `infer_many` message (at most `batch_max` each, and within the
server's max_payload), answered one message per request or in batched replies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import msgspec
import nats
import numpy as np

from runtime.connect import connect_options, resolve_creds, server_list
from schemas.ingress import INFER_MANY_TOKEN, OutgoingItem, encode_batch, entries_decoders, split_to_fit
from schemas.status import (
    CONTENT_JSON,
    HEADER_BATCH_SIZE,
    HEADER_CONTENT_TYPE,
    HEADER_DEADLINE,
    HEADER_REASON,
    HEADER_REPLIES,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    HEADER_STATUS,
    REPLIES_BATCHED,
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


class _Ledger:
    """What came back for each request, written by the one reply subscription."""

    def __init__(self, n: int, inbox: str) -> None:
        self.actual = np.full(n, np.nan)  # perf_counter when sent
        self.replied = np.full(n, np.nan)
        self.status = np.zeros(n, dtype=np.int32)  # 0: no reply yet
        self.batch = np.zeros(n, dtype=np.int32)
        self.replies = np.zeros(n, dtype=np.int32)
        self.second: list[tuple[int, str, str]] = []
        self.duplicates = 0
        self.batches: dict[int, list[int]] = {}  # batch message key -> its requests, in item order
        self._prefix_len = len(inbox) + 1

    async def on_reply(self, msg) -> None:  # noqa: ANN001
        tail = msg.subject[self._prefix_len:]
        if tail[0] == "m":
            self._on_batch_reply(tail[1:], msg)
        else:
            self._record(int(tail), msg.headers or {})

    def _record(self, i: int, headers: dict[str, str]) -> None:
        self.replies[i] += 1
        if self.status[i]:
            self.duplicates += 1
            self.second.append((i, headers.get(HEADER_STATUS, "?"), headers.get(HEADER_REASON, "")))
            return
        self.replied[i] = time.perf_counter()
        self.status[i] = int(headers.get(HEADER_STATUS, headers.get("Status", 500)))
        self.batch[i] = int(headers.get(HEADER_BATCH_SIZE, 0))

    def _on_batch_reply(self, tail: str, msg) -> None:  # noqa: ANN001
        """Batch message `m<key>`: `<inbox>.m<key>.<j>` answers its j-th request alone,
        `<inbox>.m<key>` carries batched 200s, or refuses the whole batch."""
        key, _, j = tail.partition(".")
        indices = self.batches[int(key)]
        headers = msg.headers or {}
        if j:
            self._record(indices[int(j)], headers)
        elif headers.get(HEADER_REPLIES) == REPLIES_BATCHED:
            for entry in entries_decoders[headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON)].decode(msg.data):
                self._record(indices[entry.index], entry.headers)
        else:
            for i in indices:
                self._record(i, headers)


class _Headers:
    """Request i's headers: shared dicts per (content type, SLO), or with `ledger` its own id and
    a deadline (its send time plus its SLO, or 1 s)."""

    def __init__(self, content_type: str, slo_ms: list[float] | None, ledger: bool) -> None:
        self.content_type = content_type
        self.slo_ms = slo_ms
        self.ledger = ledger
        self._shared: dict[tuple[str, float], dict[str, str]] = {}

    def __call__(self, i: int) -> dict[str, str]:
        slo_ms = self.slo_ms[i] if self.slo_ms is not None else None
        if self.ledger:
            headers = {HEADER_CONTENT_TYPE: self.content_type, HEADER_REQUEST_ID: str(i),
                       HEADER_DEADLINE: f"{time.time() * 1000 + (slo_ms or 1000.0):.3f}"}
            if slo_ms is not None:
                headers[HEADER_SLO_MS] = f"{slo_ms:g}"
            return headers
        key = (self.content_type, slo_ms or 0.0)
        headers = self._shared.get(key)
        if headers is None:
            headers = {HEADER_CONTENT_TYPE: self.content_type}
            if slo_ms is not None:
                headers[HEADER_SLO_MS] = f"{slo_ms:g}"
            self._shared[key] = headers
        return headers

    def item(self, i: int, body: bytes) -> OutgoingItem:
        """Request i as a batch item: the same id, SLO and deadline its headers would carry."""
        slo_ms = self.slo_ms[i] if self.slo_ms is not None else None
        if self.ledger:
            return OutgoingItem(msgspec.Raw(body), id=str(i), slo_ms=slo_ms,
                                deadline_ms=round(time.time() * 1000 + (slo_ms or 1000.0), 3))
        return OutgoingItem(msgspec.Raw(body), slo_ms=slo_ms)


def many_subject(subject: str) -> str:
    """`<prefix>.infer.<model>` -> `<prefix>.infer_many.<model>`: where a batch of its requests goes."""
    prefix, model = subject.rsplit(".infer.", 1)
    return f"{prefix}.{INFER_MANY_TOKEN}.{model}"


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
    batch_max: int = 1,
    replies_batched: bool = True,
) -> SendResult:
    """Send request i to `subjects[i]` with body `bodies[i]` at `times_s[i]` after start.

    `start_wall` (time.time()) lines several sender processes up on one schedule; `progress`
    gets running counts about once a second. With `ledger`, request i carries id `i` and a
    deadline (its send time plus its SLO, `slo_ms` or 1 s), as the reply contract describes.
    `batch_max` > 1: the requests due together for one subject go as batches of at most that,
    their 200s batched too unless `replies_batched` is False."""
    nc = await nats.connect(server_list(url), name="symphony-sender", pending_size=64 * 1024 * 1024,
                            flusher_queue_size=65536, **connect_options(resolve_creds(url, None, "client"), url))
    n = len(times_s)
    inbox = nc.new_inbox()
    book = _Ledger(n, inbox)
    await nc.subscribe(f"{inbox}.>", cb=book.on_reply, pending_msgs_limit=10_000_000, pending_bytes_limit=2**31)
    await nc.flush()
    if start_wall is not None:
        await asyncio.sleep(max(0.0, start_wall - time.time()))
    cpu_started = time.process_time()
    start = time.perf_counter()
    report = None if progress is None else (lambda sent: progress(_counts(sent, book, start)))
    await _send_on_time(nc, inbox, times_s, subjects, bodies, _Headers(content_type, slo_ms, ledger), book, start,
                        precise=precise, progress=report, progress_every_s=progress_every_s, batch_max=batch_max,
                        replies_batched=replies_batched)
    await nc.flush()
    send_cpu_s = time.process_time() - cpu_started
    deadline = time.perf_counter() + drain_s
    while time.perf_counter() < deadline and np.count_nonzero(book.status) < n:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    await nc.close()
    if report is not None:
        report(n)
    return SendResult(
        sent_s=np.asarray(times_s), lag_s=(book.actual - start) - np.asarray(times_s),
        latency_s=book.replied - book.actual, status=book.status, batch_size=book.batch, duplicates=book.duplicates,
        replies=book.replies, second_replies=book.second,
        extra={"cpu_s": time.process_time() - cpu_started, "send_cpu_s": send_cpu_s,
               "start_wall": time.time() - (time.perf_counter() - start)},
    )


async def _send_on_time(nc: nats.NATS, inbox: str, times_s: np.ndarray, subjects: list[str], bodies: list[bytes],
                        headers_for: _Headers, book: _Ledger, start: float, *, precise: bool,
                        progress: Callable[[int], None] | None, progress_every_s: float, batch_max: int = 1,
                        replies_batched: bool = True) -> None:
    """Publish each request at its time after `start` (perf_counter), recording when it left."""
    n = len(times_s)
    actual = book.actual
    next_progress = progress_every_s
    i = 0
    while i < n:
        now = time.perf_counter() - start
        if progress is not None and now >= next_progress:
            next_progress += progress_every_s
            progress(i)
        if times_s[i] > now:
            # Sleep until about a millisecond before the next send, then yield in a tight loop:
            # asyncio's sleep wakes up to a millisecond late, which would show up as lag.
            delay = times_s[i] - now
            if precise:
                await asyncio.sleep(min(delay - 0.001, 0.05) if delay > 0.0015 else 0)
            else:  # cheaper: sends up to about a millisecond late
                await asyncio.sleep(min(delay, 0.05))
            continue
        if batch_max > 1:
            due = i
            while due < n and times_s[due] <= now:
                due += 1
            await _send_batches(nc, inbox, range(i, due), subjects, bodies, headers_for, book, batch_max,
                                replies_batched)
            i = due
        while i < n and times_s[i] <= now:  # everything due goes out now
            actual[i] = time.perf_counter()
            await nc.publish(subjects[i], bodies[i], reply=f"{inbox}.{i}", headers=headers_for(i))
            i += 1
        await asyncio.sleep(0)


async def _send_batches(nc: nats.NATS, inbox: str, due: range, subjects: list[str], bodies: list[bytes],
                        headers_for: _Headers, book: _Ledger, batch_max: int, replies_batched: bool) -> None:
    """The requests in `due`, per subject in batches of at most `batch_max` that fit max_payload.
    Batch message `m<key>` (key: its first request) is answered on `<inbox>.m<key>[.<j>]`; with
    `replies_batched` its 200s come batched, else one message per request."""
    by_subject: dict[str, list[int]] = {}
    for i in due:
        by_subject.setdefault(subjects[i], []).append(i)
    headers = {HEADER_CONTENT_TYPE: headers_for.content_type}
    if replies_batched:
        headers[HEADER_REPLIES] = REPLIES_BATCHED
    for subject, indices in by_subject.items():
        sizes = [len(bodies[i]) + 24 for i in indices]
        for run in split_to_fit(sizes, nc.max_payload, batch_max):
            members = indices[run.start:run.stop]
            book.batches[members[0]] = members
            items = [headers_for.item(i, bodies[i]) for i in members]
            book.actual[members] = time.perf_counter()
            await nc.publish(many_subject(subject), encode_batch(items, headers_for.content_type),
                             reply=f"{inbox}.m{members[0]}", headers=headers)


def _counts(sent: int, book: _Ledger, start: float) -> dict:
    answered = book.status[:sent]
    ok = answered == 200
    latencies = (book.replied[:sent] - book.actual[:sent])[ok]
    return {"elapsed_s": time.perf_counter() - start, "sent": sent, "replied": int(np.count_nonzero(answered)),
            "ok": int(np.count_nonzero(ok)),
            "p99_ms": float(np.percentile(latencies, 99) * 1000) if latencies.size else float("nan")}
