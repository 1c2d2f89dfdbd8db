"""The one contract every scheduling policy implements, and the drivers rely on."""

from __future__ import annotations

from typing import NamedTuple, Protocol

from shard.core.actions import Step
from shard.core.events import Event


class ModelStats(NamedTuple):
    """What a policy holds for one model, for the shell's metrics, status and heartbeats.
    A tuple, so `pending, target, rate = stats` reads it too."""

    pending: int  # requests held (queued, not dispatched)
    target_batch_size: int  # the batch size it is building towards; 0 for a policy without one
    rate_rps: float  # its arrival-rate estimate; 0.0 for a policy that keeps none


class Policy(Protocol):
    """A scheduling policy: events with an explicit `now_ns` in, a `Step` out.

    Every request that enters through `RequestArrived` leaves through exactly one
    `DispatchBatch` or `DropRequests` (a `PreemptBatch` returns its requests to the queue).
    `Step.wake_at_ns` is always later than `now_ns`, or None when nothing is pending.
    A `DispatchFailed` frees its slot at once. Drivers read nothing else from a policy than the
    members below: no attributes of its own, no configuration.
    """

    name: str
    # Margin (ns before recv + SLO) by which every dispatch is predicted to finish, when the
    # policy guarantees it; None when it does not (most baselines).
    deadline_margin_ns: int | None
    # Dresp (reference §1.2): a reply's trip from the slot to the client. The shell gives a plan
    # twice this beyond its predicted finish before the agent stops starting it.
    resp_ns: int

    def handle(self, event: Event, now_ns: int) -> Step: ...

    def stats(self, now_ns: int | None = None) -> dict[str, ModelStats]:
        """Per model it owns, what it holds now (no effect on decisions). With `now_ns`, rates
        are as of then: a model whose requests stopped reads as slowing down, not as frozen."""
        ...
