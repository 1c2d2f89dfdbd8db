"""Single requests from many concurrent callers, sent as batched-ingress messages.

A gateway or frontend holds many requests in flight at once, each awaited by its own caller.
Sending each as its own NATS message pays the per-message cost (publish, routing, the shard's
decode) once per request; `CoalescingSender.submit` instead gathers the requests for one model
submitted during one event-loop turn (plus an optional `linger_us`) into one
`<prefix>.infer_many.<model>` message (schemas/ingress.py), with batched 200 replies. Each caller
still gets exactly its own request's one reply, as an `InferResult`.

Replies come back on one wildcard subscription, `<inbox>.>`: `<inbox>.<batch>` (batched 200s, or
the whole batch refused), `<inbox>.<batch>.<item>` (one request's error). A batch's bookkeeping is
dropped once every caller has its result or has given up (its future cancelled), so a reply that
never comes leaks nothing.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import msgspec
import nats

from runtime.client import InferResult, route_many_reply
from schemas.ingress import INFER_MANY_TOKEN, OutgoingItem, encode_batch, split_to_fit
from schemas.model import validate_model_name
from schemas.status import CONTENT_MSGPACK, HEADER_CONTENT_TYPE, HEADER_REPLIES, REPLIES_BATCHED, Status

PENDING_REPLIES_MAX = 1_000_000  # messages buffered on the reply subscription before NATS drops


@dataclass
class _Waiting:
    body: bytes
    future: asyncio.Future[InferResult]
    request_id: str = ""
    slo_ms: float | None = None
    deadline_ms: float | None = None


@dataclass
class _Batch:
    model: str
    futures: list[asyncio.Future[InferResult]]
    open_count: int = field(init=False)

    def __post_init__(self) -> None:
        self.open_count = len(self.futures)


class CoalescingSender:
    """Requests for one model submitted within one loop turn travel in one batch message."""

    def __init__(self, nc: nats.NATS, prefix: str = "symphony", *, content_type: str = CONTENT_MSGPACK,
                 linger_us: int = 0) -> None:
        self.nc = nc
        self.prefix = prefix
        self.content_type = content_type
        self.linger_s = linger_us / 1e6
        self.inbox = nc.new_inbox()
        self._prefix_len = len(self.inbox) + 1
        self._waiting: dict[str, list[_Waiting]] = {}
        self._batches: dict[int, _Batch] = {}
        self._numbers = itertools.count()
        self._subscription = None
        self._flushes: set[asyncio.Task] = set()
        self.messages_sent = 0  # batch messages published (the coalescing factor is requests / this)

    async def start(self) -> None:
        self._subscription = await self.nc.subscribe(f"{self.inbox}.>", cb=self._on_reply,
                                                     pending_msgs_limit=PENDING_REPLIES_MAX)

    async def stop(self) -> None:
        """Stop listening; callers still waiting get status 503 (this sender is stopping)."""
        if self._subscription is not None:
            await self._subscription.unsubscribe()
            self._subscription = None
        for batch in list(self._batches.values()):
            for future in batch.futures:
                if not future.done():
                    future.set_result(InferResult(status=Status.UNAVAILABLE, reason="gateway stopping"))
        self._batches.clear()

    @property
    def batches_open(self) -> int:
        """Batches with a caller still waiting: what a leak would make grow."""
        return len(self._batches)

    def submit(self, model: str, body: bytes, *, request_id: str = "", slo_ms: float | None = None,
               deadline_ms: float | None = None) -> asyncio.Future[InferResult]:
        """One request (`body` in this sender's content type); its future resolves to the reply.
        Cancel the future (asyncio.wait_for does, on timeout) to give up on it."""
        validate_model_name(model)
        future: asyncio.Future[InferResult] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(model, [])
        queue.append(_Waiting(body, future, request_id, slo_ms, deadline_ms))
        if len(queue) == 1:
            task = asyncio.get_running_loop().create_task(self._flush_after_turn(model))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        return future

    async def _flush_after_turn(self, model: str) -> None:
        await asyncio.sleep(self.linger_s)  # 0: one loop turn, so requests read together travel together
        waiting = [w for w in self._waiting.pop(model, []) if not w.future.done()]
        if not waiting:
            return
        sizes = [len(w.body) + len(w.request_id) for w in waiting]
        for run in split_to_fit(sizes, self.nc.max_payload):
            await self._publish(model, [waiting[j] for j in run])

    async def _publish(self, model: str, waiting: list[_Waiting]) -> None:
        number = next(self._numbers)
        batch = _Batch(model, [w.future for w in waiting])
        self._batches[number] = batch
        for w in waiting:
            w.future.add_done_callback(lambda _f, n=number: self._closed_one(n))
        items = [OutgoingItem(msgspec.Raw(w.body), id=w.request_id, slo_ms=w.slo_ms, deadline_ms=w.deadline_ms)
                 for w in waiting]
        headers = {HEADER_CONTENT_TYPE: self.content_type, HEADER_REPLIES: REPLIES_BATCHED}
        try:
            await self.nc.publish(f"{self.prefix}.{INFER_MANY_TOKEN}.{model}", encode_batch(items, self.content_type),
                                  reply=f"{self.inbox}.{number}", headers=headers)
            self.messages_sent += 1
        except nats.errors.MaxPayloadError:
            self._resolve_all(number, InferResult(status=Status.TOO_LARGE,
                                                  reason="request over the server's max_payload"))
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as error:
            self._resolve_all(number, InferResult(status=Status.UNAVAILABLE, reason=f"NATS: {error}"))

    def _closed_one(self, number: int) -> None:
        batch = self._batches.get(number)
        if batch is not None:
            batch.open_count -= 1
            if batch.open_count <= 0:
                del self._batches[number]

    def _resolve_all(self, number: int, result: InferResult) -> None:
        batch = self._batches.get(number)
        for future in batch.futures if batch else ():
            if not future.done():
                future.set_result(result)

    def _batch_len(self, number: int) -> int:
        batch = self._batches.get(number)
        return len(batch.futures) if batch is not None else -1

    def _put(self, number: int, index: int, result: InferResult) -> None:
        future = self._batches[number].futures[index]
        if not future.done():  # exactly one reply each is the contract: a second is ignored
            future.set_result(result)

    async def _on_reply(self, msg) -> None:  # noqa: ANN001
        tokens = msg.subject[self._prefix_len:]
        model = ""
        head = tokens.split(".", 1)[0]
        if head.isdigit() and int(head) in self._batches:
            model = self._batches[int(head)].model
        route_many_reply(tokens, msg.headers or {}, msg.data, model, self._batch_len, self._put)
