"""Fake slots: which slots are up, when each is free, the plans running on them, the batches
they ran and how busy they were over the bench window.

A plan runs from max(planned start, the slot's previous finish) for the true E(b) of the model's
profile on the slot's class (a mixed fleet's slot i has class `slot_classes[i % len]`), times an
optional noise factor (seeded); without noise it finishes exactly when the policy predicted
(reference §3.1; in a mixed fleet planned with the slowest profile, a faster slot finishes early).
A cancelled plan (preempted, or lost with its slot) stops at max(now, its start): its batch
record is cut there and the time it will not run leaves the busy total. The slots neither judge
requests (load.sim.outcomes) nor schedule completions (the kernel).
"""

from __future__ import annotations

import msgspec
import numpy as np

from load.sim.records import Batch
from schemas.profile import ModelProfile
from shard.core.latency import LatencyModel

PlanKey = tuple[int, int]  # (shard index, plan id): plan ids are only unique within a shard


class Plan(msgspec.Struct, frozen=True, gc=False):
    """A plan in flight on a slot; `batch_index` is its record in `FakeSlots.batches`."""

    slot_id: int
    request_ids: list[int]
    start_ns: int
    finish_ns: int
    batch_index: int


class FakeSlots:
    """Every slot of one simulation, whichever shard owns it (a moved slot keeps its work)."""

    def __init__(self, profiles: list[ModelProfile], window_ns: tuple[int, int], noise: float, seed: int, *,
                 slot_classes: list[str] = (), class_profiles: dict[str, list[ModelProfile]] | None = None) -> None:
        self.true_exec = [LatencyModel(profile, monotone=False) for profile in profiles]
        self.slot_classes = list(slot_classes)
        self.exec_by_class = {c: [LatencyModel(p, monotone=False) for p in by_model]
                              for c, by_model in (class_profiles or {}).items()}
        self.window_start_ns, self.window_end_ns = window_ns
        self.noise = noise
        self.noise_rng = np.random.default_rng([seed, 7_777])
        self.free_ns: dict[int, int] = {}  # slot -> when it really finishes its last batch; only slots that are up
        self.plans: dict[PlanKey, Plan] = {}
        self.batches: list[Batch] = []
        self.busy_ns_in_window = 0
        self.busy_ns_by_slot: dict[int, int] = {}  # the same, per slot

    def batch_size_max(self) -> list[int]:
        """Each model's largest batch, by model index (in a mixed fleet, on any class)."""
        tables = [self.true_exec, *self.exec_by_class.values()]
        return [max(t[m].batch_size_max for t in tables) for m in range(len(self.true_exec))]

    def class_of(self, slot_id: int) -> str:
        """The slot's class in a mixed fleet; "" in a homogeneous one."""
        pattern = self.slot_classes
        return pattern[slot_id % len(pattern)] if pattern else ""

    def exec_of(self, slot_id: int) -> list[LatencyModel]:
        """The true latency of every model (by index) on this slot."""
        pattern = self.slot_classes
        return self.exec_by_class[pattern[slot_id % len(pattern)]] if pattern else self.true_exec

    def true_exec_ns(self, slot_id: int, model_index: int, batch_size: int) -> int:
        """E(b) on this slot without noise: the least a plan of that batch can take there."""
        return self.exec_of(slot_id)[model_index].exec(batch_size)

    def true_forward_ns(self, slot_id: int, model_index: int, batch_size: int) -> int:
        """l(b) on this slot without noise (E(b) less pre and post)."""
        return self.exec_of(slot_id)[model_index].forward(batch_size)

    def add(self, slot_id: int, free_ns: int) -> None:
        self.free_ns[slot_id] = free_ns

    def remove(self, slot_id: int) -> None:
        del self.free_ns[slot_id]

    def is_up(self, slot_id: int) -> bool:
        return slot_id in self.free_ns

    def free_at_ns(self, slot_id: int, default_ns: int) -> int:
        return self.free_ns.get(slot_id, default_ns)

    def run(self, key: PlanKey, slot_id: int, model_index: int, request_ids: list[int], exec_at_ns: int) -> int:
        """Start a plan on its slot; returns when it really finishes."""
        start_ns = max(exec_at_ns, self.free_ns[slot_id])
        duration_ns = self.exec_of(slot_id)[model_index].exec(len(request_ids))
        if self.noise:
            duration_ns = int(duration_ns * max(0.2, 1.0 + self.noise * self.noise_rng.standard_normal()))
        finish_ns = start_ns + duration_ns
        self.free_ns[slot_id] = finish_ns
        lo = max(start_ns, self.window_start_ns)
        hi = min(finish_ns, self.window_end_ns)
        if hi > lo:
            self.busy_ns_in_window += hi - lo
            self.busy_ns_by_slot[slot_id] = self.busy_ns_by_slot.get(slot_id, 0) + hi - lo
        self.plans[key] = Plan(slot_id, request_ids, start_ns, finish_ns, len(self.batches))
        self.batches.append(Batch(slot_id, model_index, len(request_ids), start_ns, finish_ns))
        return finish_ns

    def complete(self, key: PlanKey) -> Plan | None:
        """The plan's finish has come; None when it was cancelled before."""
        return self.plans.pop(key, None)

    def cancel(self, key: PlanKey, now_ns: int) -> list[int]:
        """Stop a plan now (or before it starts); returns its requests."""
        plan = self.plans.pop(key)
        lo = max(now_ns, plan.start_ns, self.window_start_ns)
        hi = min(plan.finish_ns, self.window_end_ns)
        if hi > lo:
            self.busy_ns_in_window -= hi - lo  # the part that will not run
            self.busy_ns_by_slot[plan.slot_id] -= hi - lo
        cut_ns = max(now_ns, plan.start_ns)
        if self.free_ns.get(plan.slot_id) == plan.finish_ns:
            self.free_ns[plan.slot_id] = cut_ns
        old = self.batches[plan.batch_index]
        self.batches[plan.batch_index] = Batch(old.slot_id, old.model_index, old.size, old.start_ns, cut_ns)
        return plan.request_ids

    def plans_running_after(self, slot_id: int, now_ns: int) -> list[PlanKey]:
        """The plans on `slot_id` that have not finished by `now_ns`, in dispatch order."""
        return [key for key, plan in self.plans.items() if plan.slot_id == slot_id and plan.finish_ns > now_ns]

    def busy_ns_between(self, start_ns: int, end_ns: int) -> int:
        """Busy slot-time over [start, end), from the most recent 50,000 batches."""
        return sum(min(b.finish_ns, end_ns) - max(b.start_ns, start_ns) for b in self.batches[-50_000:]
                   if b.finish_ns > start_ns and b.start_ns < end_ns)
