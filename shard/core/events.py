"""Events the core consumes. The caller supplies `now_ns` alongside each one."""

from __future__ import annotations

import msgspec

from shard.core.config import ModelConfig


class RequestArrived(msgspec.Struct, frozen=True, gc=False):
    """A request was received now. `slo_ns` 0 means the model's default SLO."""

    request_id: int
    model: str
    slo_ns: int = 0


class WakeUp(msgspec.Struct, frozen=True, gc=False):
    """The time the core asked to be woken has come."""


class BatchCompleted(msgspec.Struct, frozen=True, gc=False):
    """An agent finished a plan; times are the shard's view (receipt-corrected)."""

    slot_id: int
    plan_id: int
    started_at_ns: int
    finished_at_ns: int


class DispatchFailed(msgspec.Struct, frozen=True, gc=False):
    """The shell could not send this plan (it refused it: too large for the server, or a slot
    that cannot run the model) and answered its requests itself. The slot is free at once, as if
    the plan had finished the moment it was granted; the simulator never sends this."""

    slot_id: int
    plan_id: int


class SlotAdded(msgspec.Struct, frozen=True, gc=False):
    """A slot joins; `free_at_ns` is when it finishes work it already has (another shard's).
    `rank` is its place in the preference order (lower is preferred; None: its slot id): grants
    take the most preferred slot free in time, so the least preferred can be released.
    `slot_class` names its device class in a mixed fleet (issue 16): the core plans it with the
    model's profile for that class (`ModelConfig.class_profiles`); "" or a class without an entry
    there uses `ModelConfig.profile`, the slowest, which is always safe."""

    slot_id: int
    free_at_ns: int = 0
    rank: int | None = None
    slot_class: str = ""


class SlotRemoved(msgspec.Struct, frozen=True, gc=False):
    """The slot is gone. Plans already sent to it are the shell's to answer."""

    slot_id: int


class ModelAdded(msgspec.Struct, frozen=True, gc=False):
    """The shard now owns this model (the coordinator moved it here)."""

    model: ModelConfig


class ModelRemoved(msgspec.Struct, frozen=True, gc=False):
    """The shard no longer owns this model: what it holds leaves with reason MOVED, for the shell
    to hand back to the model's subject (the new owner answers it)."""

    model: str


class Shutdown(msgspec.Struct, frozen=True, gc=False):
    """Stop: every request still held leaves through a drop with reason SHUTDOWN."""


WAKE_UP = WakeUp()
SHUTDOWN = Shutdown()

Event = (
    RequestArrived | WakeUp | BatchCompleted | DispatchFailed | SlotAdded | SlotRemoved | ModelAdded | ModelRemoved
    | Shutdown
)
