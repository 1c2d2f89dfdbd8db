"""Batched ingress: one NATS message that carries many requests for one model
(`<prefix>.infer_many.<model>`, docs/protocol.md), so a frontend, gateway or high-rate client
pays NATS's per-message cost once per batch instead of once per request.

Each request in a batch keeps what a single request carries in headers: its own reply subject,
id, SLO and deadline, and its body (an Open Inference Protocol request, untouched). The batch is
encoded like a single request's body, JSON or msgpack by its Content-Type header, and each item's
`body` is embedded as a value (a JSON object, or a msgpack map), not as a string or bytes: the
shard keeps the item's exact bytes (`msgspec.Raw`) and the agent decodes them as it would a single
request's body, so a JSON batch is readable and writable by hand and no body is decoded twice.

Replies: each request gets exactly one reply. By default every reply is its own message on the
request's reply subject. A batch message with header `Symphony-Replies: batched` asks for the 200
replies of its items without their own `reply` to come batched instead: one message per plan to
the batch message's reply subject, with header `Symphony-Replies: batched`, whose body (in the
batch's encoding) is a list of `ReplyEntry`: the item's index, the headers its single reply would
carry, and its body embedded as a value. Errors always come alone, on `<batch reply>.<index>`.
(load/bench/reply_style.py measured one message per request against one per batch: BENCHMARKS.)

Items are decoded one at a time (`items` are Raw in the envelope): a bad item becomes that
request's own 400 and the rest of the batch is served. Only an envelope that is not a batch at all
(or has more than ITEMS_MAX items) is refused whole, on the batch message's own reply subject.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import json_decoder, msgpack_decoder

INFER_MANY_TOKEN = "infer_many"  # the subject: <prefix>.infer_many.<model>
ITEMS_MAX = 4096  # requests in one batch message; more: the whole batch is refused (400)


class IngressBatch(msgspec.Struct, frozen=True):
    """The envelope: the items stay raw so one bad item cannot fail the others' decode."""

    requests: Annotated[list[msgspec.Raw], Meta(max_length=ITEMS_MAX)]


class IngressItem(msgspec.Struct, frozen=True):
    """One request of a batch. Its fields mirror a single request's headers; values are checked
    by the shard's admission (shard/core/admission.py), so a bad value is this item's 400.

    `reply`: where this request's one reply goes; empty: `<the batch message's reply>.<index>`
    (the item's place in `requests`, from 0), so a caller with one inbox names no subjects.
    """

    body: msgspec.Raw  # the Open Inference Protocol request, as a JSON object or msgpack map
    reply: str = ""
    id: str = ""  # as Symphony-Request-Id
    slo_ms: float | None = None  # as Symphony-Slo-Ms
    deadline_ms: float | None = None  # as Symphony-Deadline: Unix time in milliseconds


class OutgoingItem(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a caller encodes per request (the client and the load generator): `body` is a
    request body already encoded in the batch's encoding, embedded as is."""

    body: msgspec.Raw
    reply: str = ""
    id: str = ""
    slo_ms: float | None = None
    deadline_ms: float | None = None


class OutgoingBatch(msgspec.Struct, frozen=True):
    requests: list[OutgoingItem]


class ReplyEntry(msgspec.Struct, frozen=True):
    """One request's 200 in a batched reply message."""

    index: int  # the request's place in its batch message
    headers: dict[str, str]  # what its single reply's headers would be
    body: msgspec.Raw  # its reply body (docs/protocol.md), as a JSON object or msgpack map


# Typed decoders, one per encoding (schemas/codec.py: each raises only msgspec.DecodeError).
batch_decoders = {"application/json": json_decoder(IngressBatch), "application/msgpack": msgpack_decoder(IngressBatch)}
item_decoders = {"application/json": json_decoder(IngressItem), "application/msgpack": msgpack_decoder(IngressItem)}
entries_decoders = {"application/json": json_decoder(list[ReplyEntry]),
                    "application/msgpack": msgpack_decoder(list[ReplyEntry])}
batch_encoders = {"application/json": msgspec.json.Encoder(), "application/msgpack": msgspec.msgpack.Encoder()}

# What an encoded batch adds around its bodies: the envelope, and per item its keys and reply.
BATCH_BYTES_OVERHEAD = 64
ITEM_BYTES_OVERHEAD = 96


def encode_batch(items: list[OutgoingItem], content_type: str) -> bytes:
    return batch_encoders[content_type].encode(OutgoingBatch(items))


def split_to_fit(sizes: list[int], payload_bytes_max: int, items_max: int = ITEMS_MAX) -> list[range]:
    """Consecutive runs of items whose batch message fits under `payload_bytes_max` (NATS's
    max_payload) and `items_max`: `sizes` are each item's body plus reply bytes. An item too
    large even alone gets a run of its own (the server refuses it; the caller sees why)."""
    runs: list[range] = []
    start, used = 0, BATCH_BYTES_OVERHEAD
    for i, size in enumerate(sizes):
        cost = size + ITEM_BYTES_OVERHEAD
        if i > start and (used + cost > payload_bytes_max or i - start >= items_max):
            runs.append(range(start, i))
            start, used = i, BATCH_BYTES_OVERHEAD
        used += cost
    if start < len(sizes):
        runs.append(range(start, len(sizes)))
    return runs
