"""Batched ingress at the shard's door: a batch message becomes its requests, each with the reply
subject it is answered on and what admission (shard/core/admission.py) decides for it.

One rule set for both ways in: an item is judged exactly as its single request would be (same
checks, same order, same statuses), so a client may switch paths without learning new errors.
What only a batch can get wrong is decided here: an envelope that is not a batch is refused whole
(one 400 on the batch message's reply subject, since no item can be told apart), an item that is
not an item is that item's 400 on its default reply subject, and a reply subject the shard could
not publish to is refused (nats-py would send it into the protocol line as is). Nothing here
sends, logs or reads a clock: the shell passes `wall_ns` and `now_ns` in.
"""

from __future__ import annotations

import re

import msgspec

from schemas.ingress import ITEMS_MAX, IngressItem, batch_decoders, item_decoders
from schemas.limits import PAYLOAD_BYTES_LIMIT
from schemas.status import CONTENT_JSON, CONTENT_MSGPACK, HEADER_CONTENT_TYPE, Status
from shard.core.admission import (
    DEADLINE_MS_MAX,
    ITEM_NAMES,
    SLO_MS_MAX,
    Admission,
    AdmissionLimits,
    Rejected,
    SeenIds,
    admit_asked,
    item_ms,
)

# A subject nats-py can publish to and NATS delivers: dot-separated tokens, none empty, without
# whitespace, control characters or wildcards. NATS never delivers a message's own reply subject
# otherwise, but an item's `reply` is any text its caller wrote.
_PUBLISHABLE = re.compile(r"[^\s\x00-\x1f\x7f*>.]+(?:\.[^\s\x00-\x1f\x7f*>.]+)*\Z")


def open_batch(data: bytes, headers: dict[str, str]) -> list[msgspec.Raw] | Rejected:
    """The batch's raw items, or why the whole batch is refused (answered on its own reply)."""
    content_type = headers.get(HEADER_CONTENT_TYPE, CONTENT_JSON)
    if content_type not in (CONTENT_JSON, CONTENT_MSGPACK):
        return Rejected(Status.BAD_REQUEST, f"unsupported Content-Type {content_type!r}; "
                        f"use {CONTENT_JSON} or {CONTENT_MSGPACK}", "bad_request", "")
    try:
        return batch_decoders[content_type].decode(data).requests
    except msgspec.DecodeError as error:
        return Rejected(Status.BAD_REQUEST, f"malformed batch (at most {ITEMS_MAX} requests): {error}"[:200],
                        "bad_request", "")


def read_item(raw: msgspec.Raw, index: int, content_type: str, batch_reply: str) -> tuple[str, IngressItem | Rejected]:
    """One item and the subject its reply goes to: its own `reply`, else `<batch_reply>.<index>`
    ("" when neither exists: like a single request without a reply subject, it cannot be
    answered). A malformed item is answered on its default subject."""
    default = f"{batch_reply}.{index}" if batch_reply else ""
    try:
        item = item_decoders[content_type].decode(raw)
    except msgspec.DecodeError as error:
        return default, Rejected(Status.BAD_REQUEST, f"malformed request {index} of the batch: {error}"[:200],
                                 "bad_request", "")
    if not item.reply:
        return default, item
    if len(item.reply) > PAYLOAD_BYTES_LIMIT or _PUBLISHABLE.match(item.reply) is None:
        return default, Rejected(Status.BAD_REQUEST, f"request {index} of the batch: reply is not a subject "
                                 "(dot-separated tokens without spaces or wildcards)", "bad_request", item.id)
    return item.reply, item


def admit_item(item: IngressItem, body_bytes: int, content_type: str, model_slo_ns: int, wall_ns: int, now_ns: int,
               seen: SeenIds, limits: AdmissionLimits, *, queued: int, released: bool) -> Admission:
    """Admission for one item, by the single request's rules (a batch item is never a hand-back)."""
    slo_ms, deadline_ms = item_ms(item.slo_ms, SLO_MS_MAX), item_ms(item.deadline_ms, DEADLINE_MS_MAX)
    return admit_asked(content_type, item.id, slo_ms, deadline_ms, body_bytes, model_slo_ns, wall_ns, now_ns, seen,
                       limits, queued=queued, released=released, handed_back=False, names=ITEM_NAMES)
