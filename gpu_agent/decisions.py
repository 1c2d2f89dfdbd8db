"""What the agent does with a batch plan at each stage of its slot's pipeline: run it, hand it
back, withhold it, expire some or all of its requests, or reject it. Pure (STYLE §1), beside
gpu_agent/fencing.py: the shell (gpu_agent/agent.py) reads its clock once per decision and
passes the instant in; the same plan, slot and instant always give the same decision. Nothing
here publishes, logs or reads a clock.

Idea. Each request gets exactly one reply, and the agent is one of the components that may give
it (docs/reliability.md §2). The shard that sent a plan answers the plan's requests itself once
it may declare the slot lost, at `lost_after_unix_ns`; so from `WITHHOLD_MARGIN_NS` before that
moment the agent answers none of them and reports the plan withheld. That is checked first, at
every stage, and the reply stage's check is the last thing before any report or reply goes out.
Otherwise: a plan from a shard that no longer owns the slot is handed back (fencing, the rule in
gpu_agent/fencing.py); a plan the slot cannot take (its queue is full, or it does not host the
model) is rejected; requests already past their deadline when the batch would start are expired
(answered 504, never run); the rest run.

Time (docs/reliability.md §1.1). Every instant compared here is a wall-clock instant set on
another host (the shard's), compared with this host's wall clock. The plan's budget
(`deadline_us`) and the shard's monotonic `exec_at_ns` are never read: a budget starts counting
when the agent reads the plan, so only an instant shows that the plan sat in a socket buffer
while this agent was paused, which is the case the withhold rule exists for.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import msgspec

from gpu_agent.fencing import SlotOwner, plan_fenced
from schemas.plan import BatchPlan, PlanRequest

# Replies go out only until this long before the shard may declare their slot lost: the report
# that precedes them on the same connection has that long to reach the shard first. It is also
# how far this host's wall clock may run behind the shard's without risking a second reply
# (docs/reliability.md §1.1).
WITHHOLD_MARGIN_NS = 250_000_000


class Stage(enum.Enum):
    RECEIVED = "received"  # taken off the slot's plan subject, before its queue
    DEQUEUED = "dequeued"  # at the front of the slot's queue, before its bodies are decoded
    STARTING = "starting"  # inputs stacked, the moment before the batch starts
    REPLYING = "replying"  # before the report and any reply: every plan ends through here


class PlanTimes(msgspec.Struct, frozen=True, kw_only=True):
    """A plan as decisions see it: who sent it, for which model, and its wall-clock instants."""

    shard_id: str
    epoch: int
    model: str
    lost_after_unix_ns: int  # 0: a plan from before the field; never withheld
    deadlines_unix_ns: tuple[int, ...]  # of the requests still in the batch, in row order; 0: none

    @classmethod
    def of(cls, plan: BatchPlan, requests: Sequence[PlanRequest] | None = None) -> PlanTimes:
        """The plan's times, with the deadlines of `requests` (default: all of the plan's)."""
        in_batch = plan.requests if requests is None else requests
        return cls(shard_id=plan.shard_id, epoch=plan.epoch, model=plan.model,
                   lost_after_unix_ns=plan.lost_after_unix_ns,
                   deadlines_unix_ns=tuple(r.deadline_unix_ns for r in in_batch))


class SlotState(msgspec.Struct, frozen=True, kw_only=True):
    owner: SlotOwner  # the claim it granted last (no shard: without a coordinator anyone may send)
    models: frozenset[str]
    queue_full: bool = False


class Run(msgspec.Struct, frozen=True):
    """Go on to the next stage (or, at REPLYING, report and answer)."""


class HandBack(msgspec.Struct, frozen=True):
    """Fenced: re-publish every request to its model's subject, where its current shard answers."""


class Withhold(msgspec.Struct, frozen=True):
    """Answer nobody; report the plan withheld, and its shard answers every request."""

    late_ns: int  # past `lost_after_unix_ns` (negative: inside the margin), for the log


class Expire(msgspec.Struct, frozen=True):
    """Answer `expired` 504 and never run them; run `kept` (none: the plan is over)."""

    expired: tuple[int, ...]  # row indexes
    kept: tuple[int, ...]


class RejectReason(enum.Enum):
    QUEUE_FULL = "queue_full"  # the slot's plan queue is at its limit (plan_queue_max)
    MODEL_NOT_HOSTED = "model_not_hosted"  # the slot does not run the plan's model


class Reject(msgspec.Struct, frozen=True):
    """Answer every request 503 and report the plan failed."""

    reason: RejectReason


Decision = Run | HandBack | Withhold | Expire | Reject
RUN = Run()
HAND_BACK = HandBack()


def withhold_from_unix_ns(lost_after_unix_ns: int) -> int:
    """The first instant (this host's wall clock) at which a plan is withheld."""
    return lost_after_unix_ns - WITHHOLD_MARGIN_NS


def decide(stage: Stage, plan: PlanTimes, slot: SlotState, wall_ns: int) -> Decision:
    """What to do with `plan` at `stage`, at `wall_ns` (this host's wall clock, Unix ns).

    The withhold rule comes first at every stage: past it, nothing this agent could send is
    safe. Then each stage asks its own question; a stage without one lets the plan go on."""
    if plan.lost_after_unix_ns and wall_ns >= withhold_from_unix_ns(plan.lost_after_unix_ns):
        return Withhold(late_ns=wall_ns - plan.lost_after_unix_ns)
    match stage:
        case Stage.RECEIVED:
            if plan_fenced(slot.owner, plan.shard_id, plan.epoch):
                return HAND_BACK
            if slot.queue_full:
                return Reject(RejectReason.QUEUE_FULL)
        case Stage.DEQUEUED:
            if plan.model not in slot.models:
                return Reject(RejectReason.MODEL_NOT_HOSTED)
        case Stage.STARTING:
            # Work already past its deadline is never started (reliability §1): a deadline is an
            # instant, so one that passed while the plan sat in a socket buffer counts too.
            deadlines = plan.deadlines_unix_ns
            expired = tuple(i for i, deadline in enumerate(deadlines) if 0 < deadline < wall_ns)
            if expired:
                gone = frozenset(expired)
                return Expire(expired=expired, kept=tuple(i for i in range(len(deadlines)) if i not in gone))
        case Stage.REPLYING:
            pass  # only the withhold question, answered above
    return RUN
