"""What a simulation is asked to do and what it hands back: the options, injected slot events,
one shard's starting point, and the raw run with its batch and epoch records.

These are shared downward by the kernel, the partitioner, the report and the searches; this
module imports none of them, so none of them has to import the kernel for a type.
"""

from __future__ import annotations

from array import array

import msgspec

from load.schedule import Schedule
from shard.core.config import CoreConfig
from shard.core.policy import Policy


class SimEvent(msgspec.Struct, frozen=True):
    """Fault injection: a slot disappears or (re)appears at `at_s` seconds."""

    at_s: float
    kind: str  # "remove" | "add"
    slot_id: int


class SimOptions(msgspec.Struct, frozen=True, kw_only=True):
    slots: int | None = None  # default: the workload's
    scale: float = 1.0
    seed: int | None = None  # default: the workload's
    noise: float = 0.0  # relative std of execution time on the fake slots
    checks: bool = False
    core: CoreConfig = CoreConfig()
    slot_events: list[SimEvent] = []
    shards: int = 1  # > 1: models and slots partitioned by the coordinator's algorithm
    epoch_s: float = 0.0  # > 0: re-allocate slots between shards every epoch
    quotas: str = "delay"  # the coordinator's slot quotas (coordinator.placement.PlacementConfig)
    shard_rps_max: float = 0.0  # with shards > 1: split a model arriving faster than this (0: never)


class ShardSpec(msgspec.Struct):
    """One scheduler instance in a simulation: its policy, the models it owns, its first slots."""

    policy: Policy
    models: list[str]
    slots: list[int]


class Batch(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """A batch as it ran on a fake slot; a preempted or lost one ends where it was cut."""

    slot_id: int
    model_index: int
    size: int
    start_ns: int
    finish_ns: int


class EpochSample(msgspec.Struct, frozen=True, array_like=True):
    at_ns: int
    desired_slots: int  # the coordinator's load-proportional signal
    busy_slots: float  # busy slot-seconds per second over the epoch that just ended
    slots: int


class SimRun(msgspec.Struct, kw_only=True):
    """Raw results of one run; `load.sim.report` turns them into figures."""

    policy: str
    slots: int
    shards: int = 1
    model_shards: dict[str, int] = {}  # model -> shards serving it (more than one: split)
    epochs: list[EpochSample] = []
    schedule: Schedule
    model_names: list[str]
    slo_ns: list[int]
    outcome: bytearray  # per request, one of the codes in load.sim.outcomes
    finish_ns: array
    batches: list[Batch]
    busy_ns_in_window: int
    busy_ns_by_slot: dict[int, int]  # per slot, over the bench window
    cpu_s: float
    events: int
