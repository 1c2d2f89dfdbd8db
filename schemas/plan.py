"""Hot-path internal messages: one batch plan per batch (shard -> agent slot) and one completion
report per plan (agent -> shard). Append-only, array-like msgpack: new fields go last with
defaults, no field changes type (STYLE §9).

Time across hosts (docs/reliability.md §1.1): what the agent decides with is the wall-clock
instants, `PlanRequest.deadline_unix_ns` and `BatchPlan.lost_after_unix_ns`. `exec_at_ns` is the
shard's monotonic clock and `deadline_us` a budget from send; both stay on the wire (the schema
is append-only) but are shard-local and advisory: no agent reads them."""

from __future__ import annotations

import enum
import re
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.codec import msgpack_decoder
from schemas.limits import (
    BATCH_SIZE_LIMIT,
    NAMES_MAX,
    PAYLOAD_BYTES_LIMIT,
    Count,
    Epoch,
    Identifier,
    ModelName,
    Version,
)
from schemas.model import ModelSpec

# Client input the shard passes through untouched: bounded by what NATS can carry, never tighter
# (schemas/limits.py). The shard checks the content type against the two it accepts.
ClientText = Annotated[str, Meta(max_length=PAYLOAD_BYTES_LIMIT)]
ClientBytes = Annotated[bytes, Meta(max_length=PAYLOAD_BYTES_LIMIT)]
Int64 = Annotated[int, Meta(ge=-(1 << 63), le=(1 << 63) - 1)]


class PlanRequest(msgspec.Struct, frozen=True, array_like=True, gc=False):
    request_id: Count  # the shard's id
    reply: ClientText  # the client's inbox; `plan_decoder` checks it is one nats-py can publish to
    body: ClientBytes  # untouched request body
    content_type: ClientText
    client_request_id: ClientText = ""  # the Symphony-Request-Id header, echoed back
    queue_us: Int64 = 0  # time spent in the shard before the plan was sent
    deadline_unix_ns: Int64 = 0  # this request's deadline, wall clock; past it the agent does not run it
    # Batched ingress with `Symphony-Replies: batched`: `reply` is `<batch reply>.<index>`, and a 200
    # may go in one message to `<batch reply>` with the plan's other such requests (schemas/ingress.py).
    # Errors still go to `reply` alone; an agent that ignores this field answers each alone too.
    reply_batched: bool = False


class BatchPlan(msgspec.Struct, frozen=True, array_like=True, gc=False):
    version: Version
    plan_id: Count
    shard_id: Identifier
    epoch: Epoch
    slot_id: Identifier
    model: ModelName
    requests: Annotated[list[PlanRequest], Meta(max_length=BATCH_SIZE_LIMIT)]
    # Shard-local, advisory: the shard's monotonic clock, meaningless on another host; for logs.
    exec_at_ns: Int64
    # Advisory: a budget from send to the plan's predicted finish plus twice the reply margin.
    # Agents do not read it: a budget starts counting when the agent reads the plan, so a plan
    # that sat in a socket buffer while the agent was paused would look fresh (reliability §1.1).
    deadline_us: Int64
    # The earliest member's deadline as wall-clock time (time.time_ns); agents check each
    # request's own `deadline_unix_ns`, this is the minimum of those, for logs.
    deadline_unix_ns: Int64 = 0
    # When the shard declares this plan's slot lost if no report came (wall clock). Past it minus
    # the agent's withhold margin the agent sends no reply (the shard answers); it reports
    # `withheld` instead. 0 (a plan from before this field): never withheld.
    lost_after_unix_ns: Int64 = 0


class PlanHeader(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The first fields of a BatchPlan: enough to fence it without decoding the bodies."""

    version: Version
    plan_id: Count
    shard_id: Identifier
    epoch: Epoch


class ReportStatus(enum.StrEnum):
    """What became of a plan, in its completion report. Encoded by value, so the bytes are the
    strings version 1 sent. A new value is a wire change for older shards (their decoder refuses
    the report, and a plan without a report ends as a lost slot): shards learn it before any
    agent sends it."""

    DONE = "done"  # ran; `ok` got 200, `errors` an error (bad input, expired at start)
    EXPIRED = "expired"  # every request was past its deadline at start: answered 504, not run
    FAILED = "failed"  # not run or failed while running: every request answered 503 or 500
    HANDED_BACK = "handed_back"  # fenced: every request re-published to its model's subject
    WITHHELD = "withheld"  # reached too late to answer: nobody answered here, the shard answers


class CompletionReport(msgspec.Struct, frozen=True, array_like=True, gc=False):
    version: Version
    plan_id: Count
    slot_id: Identifier
    batch_size: Annotated[int, Meta(ge=0, le=BATCH_SIZE_LIMIT)]
    compute_us: Count  # measured on the agent
    queued_us: Count  # wait on the agent before the batch started
    ok: Annotated[int, Meta(ge=0, le=BATCH_SIZE_LIMIT)]  # requests answered 200
    errors: Annotated[int, Meta(ge=0, le=BATCH_SIZE_LIMIT)]  # answered with an error (bad input, expired, internal)
    status: ReportStatus = ReportStatus.DONE


class SlotInfo(msgspec.Struct, frozen=True, kw_only=True):
    version: Version = 1
    slot_id: Identifier
    agent_id: Identifier
    device: Annotated[str, Meta(max_length=1024)]
    models: Annotated[list[ModelName], Meta(max_length=NAMES_MAX)]


class AgentInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What an agent answers on `<prefix>.agent.<id>.info`: its slots and the models it loaded,
    with their measured profiles (a shard without a coordinator plans with these)."""

    version: Version = 1
    agent_id: Identifier
    slots: Annotated[list[SlotInfo], Meta(max_length=NAMES_MAX)]
    models: Annotated[list[ModelSpec], Meta(max_length=NAMES_MAX)]


PLAN_VERSION = 1
REPORT_VERSION = 1

plan_encoder = msgspec.msgpack.Encoder()
_NOT_IN_SUBJECTS = re.compile(r"[ \t\r\n]")


def _replies_publishable(plan: BatchPlan) -> str | None:
    """Every reply subject is one nats-py will publish to (not empty, no whitespace): the agent
    answers each, and a publish it refuses would fail the whole plan. NATS never delivers a reply
    subject without these, so only a forged plan fails here. One regex over all of them: a
    `Meta(pattern=...)` per request costs a microsecond each on the agent's hot path."""
    replies = [r.reply for r in plan.requests]
    if "" in replies or _NOT_IN_SUBJECTS.search("".join(replies)):
        return "a request's reply subject is empty or has whitespace"
    return None


# Typed decoders (schemas/codec.py): each raises msgspec.DecodeError, and nothing else, on bytes
# that are not a valid message within the limits above.
plan_decoder = msgpack_decoder(BatchPlan, _replies_publishable)
plan_header_decoder = msgpack_decoder(PlanHeader)
report_decoder = msgpack_decoder(CompletionReport)
