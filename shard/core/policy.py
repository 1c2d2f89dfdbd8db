"""The one contract every scheduling policy implements, and the drivers rely on."""

from __future__ import annotations

from typing import Protocol

from shard.core.actions import Step
from shard.core.events import Event


class Policy(Protocol):
    """A scheduling policy: events with an explicit `now_ns` in, a `Step` out.

    Every request that enters through `RequestArrived` leaves through exactly one
    `DispatchBatch` or `DropRequests` (a `PreemptBatch` returns its requests to the queue).
    `Step.wake_at_ns` is always later than `now_ns`, or None when nothing is pending.
    """

    name: str
    # Margin (ns before recv + SLO) by which every dispatch is predicted to finish, when the
    # policy guarantees it; None when it does not (most baselines).
    deadline_margin_ns: int | None

    def handle(self, event: Event, now_ns: int) -> Step: ...
