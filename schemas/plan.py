"""Hot-path internal messages: one batch plan per batch (shard -> agent slot) and one completion
report per plan (agent -> shard). Append-only, array-like msgpack: new fields go last with
defaults, no field changes type (STYLE §9)."""

from __future__ import annotations

import msgspec


class PlanRequest(msgspec.Struct, frozen=True, array_like=True, gc=False):
    request_id: int  # the shard's id
    reply: str  # the client's inbox
    body: bytes  # untouched request body
    content_type: str
    client_request_id: str = ""  # the Symphony-Request-Id header, echoed back
    queue_us: int = 0  # time spent in the shard before the plan was sent
    deadline_unix_ns: int = 0  # this request's deadline, wall clock; past it the agent does not run it


class BatchPlan(msgspec.Struct, frozen=True, array_like=True, gc=False):
    version: int
    plan_id: int
    shard_id: str
    epoch: int
    slot_id: str
    model: str
    requests: list[PlanRequest]
    exec_at_ns: int  # shard clock; the agent never compares it with its own
    deadline_us: int  # budget from send to the earliest member's deadline; past it: drop on dequeue
    # The same deadline as wall-clock time (time.time_ns): survives a pause of either process,
    # since a plan that waited in a socket buffer looks fresh to a receipt-time budget.
    deadline_unix_ns: int = 0


class PlanHeader(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """The first fields of a BatchPlan: enough to fence it without decoding the bodies."""

    version: int
    plan_id: int
    shard_id: str
    epoch: int


class CompletionReport(msgspec.Struct, frozen=True, array_like=True, gc=False):
    version: int
    plan_id: int
    slot_id: str
    batch_size: int
    compute_us: int  # measured on the agent
    queued_us: int  # wait on the agent before the batch started
    ok: int  # requests answered 200
    errors: int  # requests answered with an error (bad input, expired, internal)
    status: str = "done"  # "done" | "expired" | "failed"


class SlotInfo(msgspec.Struct, frozen=True, kw_only=True):
    version: int = 1
    slot_id: str
    agent_id: str
    device: str
    models: list[str]


PLAN_VERSION = 1
REPORT_VERSION = 1

plan_encoder = msgspec.msgpack.Encoder()
plan_decoder = msgspec.msgpack.Decoder(BatchPlan)
plan_header_decoder = msgspec.msgpack.Decoder(PlanHeader)
report_decoder = msgspec.msgpack.Decoder(CompletionReport)
