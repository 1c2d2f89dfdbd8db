"""Decisions the core returns. Records, not wire messages: the shell translates them."""

from __future__ import annotations

import enum

import msgspec


class DropReason(enum.Enum):
    """Why a request leaves without running. The shell maps each to a reply status."""

    DEADLINE = "deadline"  # it cannot meet its deadline (504)
    QUEUE_TIMEOUT = "queue_timeout"  # waited longer than the queue timeout (Triton-style, 504)
    OVERLOADED = "overloaded"  # the model's queue is full (429)
    NO_SLOT = "no_slot"  # no slot can serve this model (503)
    UNKNOWN_MODEL = "unknown_model"  # the core does not own this model (404)
    SHUTDOWN = "shutdown"  # the scheduler stopped while holding it (503)
    MOVED = "moved"  # the model moved to another shard; the shell hands the request back


class DispatchBatch(msgspec.Struct, frozen=True, gc=False):
    """Run these requests as one batch on this slot, starting at `exec_at_ns`."""

    plan_id: int
    slot_id: int
    model: str
    request_ids: list[int]
    exec_at_ns: int
    finish_at_ns: int  # the policy's prediction


class DropRequests(msgspec.Struct, frozen=True, gc=False):
    model: str
    request_ids: list[int]
    reason: DropReason


class PreemptBatch(msgspec.Struct, frozen=True, gc=False):
    """Cancel a running plan; its requests went back to the policy's queue (Shepherd)."""

    slot_id: int
    plan_id: int


Action = DispatchBatch | DropRequests | PreemptBatch


class Step(msgspec.Struct, frozen=True, gc=False):
    """What one `handle()` call decided, and when the core wants to be woken next."""

    actions: list[Action]
    wake_at_ns: int | None
