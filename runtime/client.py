"""A small async Python client for symphony: `await client.infer("mlp", {"x": array})`.

Any NATS client in any language can do the same with docs/protocol.md; this one is what the CLI
and the tests use.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import nats
import numpy as np

from runtime.connect import connect_client
from runtime.nats_auth import Creds
from runtime.stats import Gathered, gather_statistics
from schemas.ingress import INFER_MANY_TOKEN, OutgoingItem, encode_batch, entries_decoders, split_to_fit
from schemas.model import ModelMetadata, model_list_decoder, model_metadata_decoder, validate_model_name
from schemas.status import (
    CONTENT_JSON,
    CONTENT_MSGPACK,
    HEADER_BATCH_SIZE,
    HEADER_COMPUTE_US,
    HEADER_CONTENT_TYPE,
    HEADER_QUEUE_US,
    HEADER_REASON,
    HEADER_REPLIES,
    HEADER_REQUEST_ID,
    HEADER_SLO_MS,
    HEADER_STATUS,
    REPLIES_BATCHED,
    Status,
)
from schemas.tensors import TensorError, decode_response, encode_request, to_array

LOCAL_URL_FILE = os.path.expanduser("~/.symphony/nats-url")


def default_nats_url(explicit: str | None = None) -> str:
    """--nats-url, else $NATS_URL (the NATS tools' convention), else the local cluster's."""
    if explicit:
        return explicit
    if os.environ.get("NATS_URL"):
        return os.environ["NATS_URL"]
    if os.path.exists(LOCAL_URL_FILE):
        with open(LOCAL_URL_FILE) as handle:
            return handle.read().strip()
    return "nats://127.0.0.1:4222"


@dataclass
class InferResult:
    status: int
    reason: str = ""
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    @property
    def batch_size(self) -> int:
        return int(self.headers.get(HEADER_BATCH_SIZE, 0))

    @property
    def queue_us(self) -> int:
        return int(self.headers.get(HEADER_QUEUE_US, 0))

    @property
    def compute_us(self) -> int:
        return int(self.headers.get(HEADER_COMPUTE_US, 0))


class SymphonyClient:
    def __init__(self, nc: nats.NATS, prefix: str = "symphony") -> None:
        self.nc = nc
        self.prefix = prefix

    @classmethod
    async def connect(cls, url: str | None = None, prefix: str = "symphony",
                      creds: Creds | str | Path | None = None) -> SymphonyClient:
        """`creds`: a client user's credentials (runtime/nats_auth.py), else $SYMPHONY_NATS_CREDS, else
        those `symphony up` recorded for this URL, else none (an open server)."""
        return cls(await connect_client(default_nats_url(url), creds=creds), prefix)

    async def close(self) -> None:
        await self.nc.drain()

    async def infer(
        self,
        model: str,
        inputs: dict[str, np.ndarray] | bytes,
        *,
        slo_ms: float | None = None,
        request_id: str | None = None,
        content_type: str = CONTENT_MSGPACK,
        timeout_s: float = 10.0,
    ) -> InferResult:
        """One request. An invalid model name raises InvalidModelName (a ValueError) before anything
        is sent: `a.b` or `a.*` would address other subjects, not a model."""
        subject = f"{self.prefix}.infer.{validate_model_name(model)}"
        body = inputs if isinstance(inputs, bytes) else encode_request(inputs, content_type)
        headers = {HEADER_CONTENT_TYPE: content_type}
        if slo_ms is not None:
            headers[HEADER_SLO_MS] = f"{slo_ms:g}"
        if request_id is not None:
            headers[HEADER_REQUEST_ID] = request_id
        try:
            msg = await self.nc.request(subject, body, timeout=timeout_s, headers=headers)
        except nats.errors.NoRespondersError:
            return InferResult(status=Status.UNKNOWN_MODEL, reason=f"no shard serves model {model!r}")
        return parse_reply(msg.headers or {}, msg.data)

    async def infer_many(
        self,
        model: str,
        inputs: list[dict[str, np.ndarray] | bytes],
        *,
        slo_ms: float | None = None,
        request_ids: list[str] | None = None,
        content_type: str = CONTENT_MSGPACK,
        timeout_s: float = 10.0,
        batched_replies: bool = True,
    ) -> list[InferResult]:
        """Many requests for one model, in as few messages as the server's max_payload allows
        (batched ingress, docs/protocol.md): the per-message cost is paid once per batch, and
        each request still gets exactly one reply, by default in batched reply messages (one per
        batch and plan: `batched_replies=False` asks for one message per request). Results come
        back in `inputs` order; a request without a reply within `timeout_s` has status 0."""
        subject = f"{self.prefix}.{INFER_MANY_TOKEN}.{validate_model_name(model)}"
        bodies = [x if isinstance(x, bytes) else encode_request(x, content_type) for x in inputs]
        ids = request_ids or [""] * len(bodies)
        runs = split_to_fit([len(b) + len(i) for b, i in zip(bodies, ids, strict=True)], self.nc.max_payload)
        inbox = self.nc.new_inbox()
        gather = _ManyReplies(len(inbox) + 1, runs, model)
        sub = await self.nc.subscribe(f"{inbox}.>", cb=gather.on_reply, pending_msgs_limit=1_000_000)
        try:
            headers = {HEADER_CONTENT_TYPE: content_type}
            if batched_replies:
                headers[HEADER_REPLIES] = REPLIES_BATCHED
            for k, run in enumerate(runs):
                items = [OutgoingItem(msgspec.Raw(bodies[j]), id=ids[j], slo_ms=slo_ms) for j in run]
                try:
                    await self.nc.publish(subject, encode_batch(items, content_type), reply=f"{inbox}.{k}",
                                          headers=headers)
                except nats.errors.MaxPayloadError:
                    gather.fill(k, InferResult(status=Status.TOO_LARGE, reason="request over the server's max_payload"))
            try:
                await asyncio.wait_for(gather.done.wait(), timeout_s)
            except TimeoutError:
                pass
        finally:
            await sub.unsubscribe()
        return gather.results()

    async def metadata(self, model: str, timeout_s: float = 5.0) -> ModelMetadata:
        subject = f"{self.prefix}.meta.{validate_model_name(model)}"
        msg = await self.nc.request(subject, b"", timeout=timeout_s)
        return model_metadata_decoder.decode(msg.data)  # msgspec.DecodeError if it is not metadata

    async def models(self, timeout_s: float = 5.0) -> list[str]:
        msg = await self.nc.request(f"{self.prefix}.meta", b"", timeout=timeout_s)
        return model_list_decoder.decode(msg.data).models

    async def statistics(self, model: str | None = None, wait_s: float = 1.0) -> Gathered:
        """Triton's statistics of `model` (or every model), gathered from every shard and agent
        (runtime/stats.py); `.response` is what `/v2/models[/<model>]/stats` returns."""
        return await gather_statistics(self.nc, self.prefix, model, wait_s=wait_s)


class _ManyReplies:
    """The replies to `infer_many`'s batches, on one inbox: `<inbox>.<batch>.<item>` answers one
    request, `<inbox>.<batch>` the whole batch (refused, or NATS's no responders)."""

    def __init__(self, prefix_len: int, runs: list[range], model: str) -> None:
        self.prefix_len = prefix_len
        self.runs = runs
        self.model = model
        self.slots: list[InferResult | None] = [None] * sum(len(r) for r in runs)
        self.missing = len(self.slots)
        self.done = asyncio.Event()
        if not self.missing:
            self.done.set()

    def fill(self, batch: int, result: InferResult) -> None:
        for j in self.runs[batch]:
            self.put(j, result)

    def put(self, j: int, result: InferResult) -> None:
        if self.slots[j] is None:  # exactly one reply each is the contract: a second is ignored
            self.slots[j] = result
            self.missing -= 1
            if not self.missing:
                self.done.set()

    async def on_reply(self, msg) -> None:  # noqa: ANN001
        route_many_reply(msg.subject[self.prefix_len:], msg.headers or {}, msg.data, self.model,
                         lambda batch: len(self.runs[batch]) if batch < len(self.runs) else -1,
                         lambda batch, i, result: self.put(self.runs[batch][i], result))

    def results(self) -> list[InferResult]:
        return [r if r is not None else InferResult(status=0, reason="no reply within the timeout")
                for r in self.slots]


def route_many_reply(tokens: str, headers: dict[str, str], data: bytes, model: str,
                     batch_len: Callable[[int], int], put: Callable[[int, int, InferResult], None]) -> None:
    """One reply on a batched-ingress inbox, `tokens` being its subject after `<inbox>.`:
    `<batch>.<item>` answers one request; `<batch>` carries a batched reply's entries or answers
    the whole batch (refused, or NATS's no responders). `batch_len(batch)` is the batch's item
    count (negative: not a batch this caller waits for); `put(batch, item, result)` takes each
    answer. Used by `infer_many` and `CoalescingSender`."""
    parts = tokens.split(".")
    if not parts[0].isdigit() or (size := batch_len(int(parts[0]))) < 0:
        return
    batch = int(parts[0])
    if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) < size:
        put(batch, int(parts[1]), parse_reply(headers, data))
    elif len(parts) != 1:
        return
    elif headers.get(HEADER_REPLIES) == REPLIES_BATCHED:
        _put_entries(batch, size, data, headers, put)
    else:
        if headers.get("Status") == "503" and HEADER_STATUS not in headers:
            whole = InferResult(status=Status.UNKNOWN_MODEL, reason=f"no shard serves model {model!r}")
        else:
            whole = parse_reply(headers, data)
        for i in range(size):
            put(batch, i, whole)


def _put_entries(batch: int, size: int, data: bytes, headers: dict[str, str],
                 put: Callable[[int, int, InferResult], None]) -> None:
    """A batched reply: each entry is one request's 200, as its own reply would be."""
    decoder = entries_decoders.get(headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON))
    if decoder is None:
        return
    try:
        entries = decoder.decode(data)
    except msgspec.DecodeError:
        return  # not symphony's: its requests time out (status 0) rather than read garbage
    for entry in entries:
        if 0 <= entry.index < size:
            put(batch, entry.index, parse_reply(entry.headers, bytes(entry.body)))


def parse_reply(headers: dict[str, str], data: bytes) -> InferResult:
    """A reply as an InferResult; a reply that is not one symphony sends becomes a 500 saying why."""
    text = headers.get(HEADER_STATUS, "500")
    if not (text.isascii() and text.isdigit() and len(text) == 3):
        return InferResult(status=Status.INTERNAL, reason=f"unreadable reply status {text[:20]!r}",
                           headers=dict(headers))
    status = int(text)
    result = InferResult(status=status, reason=headers.get(HEADER_REASON, ""), headers=dict(headers))
    if status == Status.OK and data:
        try:
            body = decode_response(data, headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON))
            result.outputs = {t.name: to_array(t) for t in body.outputs}
        except TensorError as error:
            return InferResult(status=Status.INTERNAL, reason=f"unreadable reply body: {error}", headers=dict(headers))
    return result
