"""What the shard sends for the core's actions: a `DispatchBatch` becomes one
`schemas.plan.BatchPlan` for the slot's agent, a `DropRequests` becomes one error reply per
request; and what the shard holds meanwhile (`Pending` requests, plans `InFlight`).

The decisions here are pure (which reply a drop gets, whether a plan may be sent, the plan's
fields and budgets); the shell sends. Nothing here reads a clock or keeps state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import msgspec
import nats

from schemas.plan import PLAN_VERSION, BatchPlan, PlanRequest
from schemas.status import Status, error_headers
from shard.core.actions import DispatchBatch, DropReason

# Each reason the core drops a request for: the reply's status and reason, and its outcome label.
# MOVED is never answered: the request is handed back to the model's new owner.
DROP_REPLY: dict[DropReason, tuple[Status, str, str]] = {
    DropReason.DEADLINE: (Status.DROPPED, "dropped: its deadline cannot be met", "dropped"),
    DropReason.QUEUE_TIMEOUT: (Status.DROPPED, "dropped: waited past the queue timeout", "dropped"),
    DropReason.OVERLOADED: (Status.OVERLOADED, "overloaded: the model's queue is full", "rejected"),
    DropReason.NO_SLOT: (Status.UNAVAILABLE, "unavailable: no slot can serve this model", "unavailable"),
    DropReason.UNKNOWN_MODEL: (Status.UNKNOWN_MODEL, "unknown model", "unavailable"),
    DropReason.SHUTDOWN: (Status.UNAVAILABLE, "unavailable: the scheduler is stopping", "unavailable"),
    DropReason.MOVED: (Status.UNAVAILABLE, "unavailable: the model moved", "unavailable"),
}


@dataclass(slots=True)
class Pending:
    """A request the core holds: its body stays bytes until it goes out in a plan."""

    reply: str
    body: bytes
    content_type: str
    client_request_id: str
    recv_ns: int
    deadline_unix_ns: int  # wall clock: travels with the request in plans and hand-backs
    reply_batched: bool = False  # its 200 may share one message with its batch's (schemas/ingress.py)


@dataclass(slots=True)
class InFlight:
    """A plan sent and not yet reported: the shard answers its requests if the slot is lost."""

    slot_id: str
    model: str
    requests: list[PlanRequest]
    sent_ns: int
    finish_ns: int  # the core's predicted finish; the lost-slot watch extends it over a stall
    connection: int = 0  # this shard's reconnect count when the plan was sent


class Refusal(msgspec.Struct, frozen=True):
    """Why a plan is answered instead of sent: `why` labels the plans_refused metric."""

    why: str
    status: Status
    reason: str
    outcome: str


def take_requests(pending: dict[int, Pending], request_ids: Iterable[int], now_ns: int) -> list[PlanRequest]:
    """Take a batch's requests out of the shard's queue, with how long each waited."""
    requests = []
    for rid in request_ids:
        held = pending.pop(rid)
        requests.append(PlanRequest(rid, held.reply, held.body, held.content_type, held.client_request_id,
                                    (now_ns - held.recv_ns) // 1000, held.deadline_unix_ns, held.reply_batched))
    return requests


def build_plan(action: DispatchBatch, requests: list[PlanRequest], *, shard_id: str, slot_id: str, epoch: int,
               now_ns: int, wall_ns: int, resp_ns: int, grace_ns: int) -> BatchPlan:
    """The batch plan for a dispatch. The agent may start it until its predicted finish plus
    two reply trips (`deadline_us`), never a request past its own wall-clock deadline, and
    answers it only until the moment this shard may declare the slot lost (`lost_after_unix_ns`:
    predicted finish plus the slot grace, docs/reliability.md §2 rule 2)."""
    return BatchPlan(
        version=PLAN_VERSION, plan_id=action.plan_id, shard_id=shard_id, slot_id=slot_id, epoch=epoch,
        model=action.model, requests=requests, exec_at_ns=action.exec_at_ns,
        deadline_us=max(0, (action.finish_at_ns - now_ns) // 1000 + 2 * resp_ns // 1000),
        deadline_unix_ns=min(r.deadline_unix_ns for r in requests),
        lost_after_unix_ns=wall_ns + action.finish_at_ns - now_ns + grace_ns,
    )


def plan_refusal(model: str, slot_id: str, slot_models: Iterable[str], requests: int, plan_bytes: int,
                 max_payload: int) -> Refusal | None:
    """Whether a plan must be answered instead of sent, and how; None when it may be sent."""
    if model not in slot_models:
        # The core granted a slot that cannot run the model: a bug in how ownership changed
        # (shard/core/ownership.py keeps this from happening). Never send it: answer it.
        return Refusal("slot_cannot_run_model", Status.UNAVAILABLE,
                       f"unavailable: slot {slot_id} cannot run {model}", "unavailable")
    if plan_bytes > max_payload:
        # Valid bodies can add up past what NATS carries in one message: answer them (not
        # silently lose the slot).
        return Refusal("too_large", Status.TOO_LARGE, f"batch of {requests} is {plan_bytes} bytes, over the server's "
                       f"max_payload {max_payload}; send smaller bodies", "rejected")
    return None


async def reply_error(nc: nats.NATS, reply: str, status: Status, reason: str, client_request_id: str = "") -> None:
    """One error reply: status and reason in headers, no body (docs/protocol.md)."""
    await nc.publish(reply, b"", headers=error_headers(status, reason, client_request_id))
