"""Nexus's batch-aware planning math (reference §4.1): per-model batch plans, squishy bin
packing on a slot, best-fit placement. Pure functions and small records; the policy in
`nexus.py` owns the state and the clock. Times here are microseconds, as in the reference.

Mixed fleets (issue 16): a `SlotPlan` carries its slot's class and a `NexusModel` its per-class
variants, so every plan made for a slot (batch, duty, throughput) uses that slot's class: see
`NexusModel.on`. With no classes every variant is the model itself."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shard.core.latency import LatencyModel

NETWORK_US = 2000.0  # the profile's hard-coded network latency (GetMaxBatch)


@dataclass
class NexusModel:
    name: str
    slo_us: float
    forward_us: list[float]  # index b; index 0 unused; out of range = 3600 s
    pre_post_us: float
    batch_size_max: int
    classes: dict[str, NexusModel] = field(default_factory=dict)  # per slot class; empty: one profile

    @classmethod
    def from_latency(cls, name: str, slo_ns: int, latency: LatencyModel) -> NexusModel:
        return cls(
            name=name,
            slo_us=slo_ns / 1000,
            forward_us=[f / 1000 for f in latency.forward_ns],
            pre_post_us=latency.pre_post_ns / 1000,
            batch_size_max=latency.batch_size_max,
        )

    def on(self, slot_class: str) -> NexusModel:
        """This model as planned on a slot of `slot_class`; itself (the slowest profile) for ""
        or a class without a profile. A variant's own `classes` is empty, so `on` is idempotent."""
        return self.classes.get(slot_class, self)

    def l(self, b: int) -> float:  # noqa: E743 - the reference's name
        return self.forward_us[b] if 1 <= b <= self.batch_size_max else 3600e6

    @property
    def max_batch(self) -> int:
        """GetMaxBatch(SLO): the largest b with l(b) <= (SLO - 2 ms - pre - post) / 2."""
        budget = (self.slo_us - NETWORK_US - self.pre_post_us) / 2
        best = 1
        for b in range(1, self.batch_size_max + 1):
            if self.forward_us[b] <= budget:
                best = b
        return best


@dataclass
class Instance:
    """One model's share of one slot: planned batch, duty, throughput (routing weight)."""

    model: NexusModel
    batch: int
    max_duty_us: float
    throughput: float
    workload: float


def compute_batch_size(model: NexusModel, workload: float) -> Instance | None:
    """BackendDelegate::ComputeBatchSize; None when infeasible."""
    max_batch = model.max_batch
    max_tp = max_batch / model.l(max_batch) * 1e6
    if workload == 0 or workload >= max_tp:
        fwd = model.l(max_batch)
        return Instance(model, max_batch, fwd, max_tp, max_tp)
    batch = 0
    for b in range(1, max_batch + 1):
        if (b - 1) / workload * 1e6 + model.l(b) + model.pre_post_us <= model.slo_us:
            batch = b
    if batch == 0:
        return None
    fwd = model.l(batch)
    max_duty = min(model.slo_us - fwd - model.pre_post_us, batch / workload * 1e6)
    return Instance(model, batch, max_duty, batch / max_duty * 1e6, workload)


def ceil_eps(x: float) -> int:
    """Ceil, unless within 1e-3 above an integer."""
    return math.floor(x) if x - math.floor(x) < 1e-3 else math.ceil(x)


@dataclass
class SlotPlan:
    """A slot's model table and duty cycle."""

    slot_id: int
    instances: dict[str, Instance] = field(default_factory=dict)
    duty_us: float = 0.0
    exec_us: float = 0.0
    occupancy: float = 0.0
    overload: bool = False
    batches: dict[str, int] = field(default_factory=dict)  # planned batch per model; kept on unload
    slot_class: str = ""  # the class its instances are planned with (issue 16)

    def recompute(self) -> None:
        duty, exec_us, overload, batches = calc_cycle(list(self.instances.values()))
        self.duty_us, self.exec_us, self.overload = duty, exec_us, overload
        self.occupancy = exec_us / duty if duty > 0 else 0.0
        self.batches.update(batches)


def calc_cycle(instances: list[Instance]) -> tuple[float, float, bool, dict[str, int]]:
    """Squishy bin packing on one slot: (duty, exec, overload, batch per model)."""
    if not instances:
        return 0.0, 0.0, False, {}
    duty = min(i.max_duty_us for i in instances)
    exec_us = 0.0
    overload = False
    batches: dict[str, int] = {}
    for inst in instances:
        b = ceil_eps(duty * inst.workload / 1e6)
        if b > inst.model.max_batch:
            overload = True
            b = 0
            fwd = inst.model.l(inst.model.max_batch)
        else:
            fwd = inst.model.l(b) if b >= 1 else 0.0
        batches[inst.model.name] = b
        exec_us += fwd
    overload = overload or exec_us > duty
    return duty, exec_us, overload, batches


def prepare_load(slot: SlotPlan, model: NexusModel, workload: float) -> tuple[float, Instance] | None:
    """PrepareLoadModel: (new occupancy, instance) if the model fits on the slot, else None.
    The instance is planned on the slot's class."""
    if model.name in slot.instances or slot.occupancy >= 1:
        return None
    inst = compute_batch_size(model.on(slot.slot_class), workload)
    if inst is None:
        return None
    if slot.instances and slot.duty_us > 0 and inst.max_duty_us >= slot.duty_us and workload > 0:
        inst.batch = ceil_eps(slot.duty_us * workload / 1e6)
        inst.throughput = inst.batch / slot.duty_us * 1e6
    duty, exec_us, _overload, _b = calc_cycle([*slot.instances.values(), inst])
    if exec_us > duty:
        return None
    return exec_us / duty, inst


def find_best_slot(
    slots: list[SlotPlan], model: NexusModel, rate: float, skip: set[int]
) -> tuple[SlotPlan, Instance] | None:
    """FindBestBackend: max throughput when idle-only, spanning, or else best fit (occupancy)."""
    best_tp: tuple[SlotPlan, Instance] | None = None
    best_occ: tuple[SlotPlan, Instance, float] | None = None
    for slot in slots:
        if slot.slot_id in skip:
            continue
        if rate < 1e-3 and slot.instances:
            continue
        prepared = prepare_load(slot, model, rate)
        if prepared is None:
            continue
        occupancy, inst = prepared
        if best_tp is None or inst.throughput > best_tp[1].throughput:
            best_tp = (slot, inst)
        if best_occ is None or occupancy > best_occ[2]:
            best_occ = (slot, inst, occupancy)
    if best_tp is None:
        return None
    if rate < 1e-3 or best_tp[1].throughput < rate:
        return best_tp
    assert best_occ is not None
    return best_occ[0], best_occ[1]
