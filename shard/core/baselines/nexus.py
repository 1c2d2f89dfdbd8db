"""Nexus (reference §4.1): epoch planning, weighted routing, round-robin slot executors.

Idea. A global planner estimates each model's rate (1 s counts, EWMA, a 30-sample history) and,
every epoch, packs model sessions onto slots with squishy bin packing so each slot cycles
through its models at planned batch sizes. Requests are routed to a slot at arrival by deficit
round robin over the model's slots, weighted by planned throughput; each slot loops over its
models in order, taking a sliding-window batch with early drop, and runs it.

Faithful quirks kept: one slot per model at max batch until the first epoch; no re-plan until a
model has a full 30 s history; estimates are the last EWMA sample; a slot polls every 50 us when
it finds no work. `nexus-warm` primes the history with the workload's rate and plans at t = 0,
as if the system had been running at that load for a while; it is reported under its own name.

Mixed fleets (issue 16, `per_slot` mode): planning is per class. Each slot plan carries its slot's
class, and every batch size, duty cycle and throughput planned for it comes from the model's
profile for that class (`NexusModel.on`), so a fast slot plans larger batches, a higher
throughput and hence a larger routing weight. Its executor's sliding window and predicted finish
use the same class. In `slowest` mode every slot plans with `ModelConfig.profile`, as before.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import count

from shard.core.actions import DispatchBatch, DropReason, DropRequests, Step
from shard.core.baselines.nexus_plan import (
    NexusModel,
    SlotPlan,
    compute_batch_size,
    find_best_slot,
    prepare_load,
)
from shard.core.baselines.slot_classes import class_latencies, slot_class_of
from shard.core.config import CoreConfig, ModelConfig, SlotProfiles
from shard.core.events import BatchCompleted, DispatchFailed, RequestArrived, Shutdown, SlotAdded, SlotRemoved, WakeUp
from shard.core.latency import LatencyModel
from shard.core.policy import ModelStats
from shard.core.timers import TimerOwner, TimerQueue

BEACON_NS = 1_000_000_000
EPOCH_NS = 30 * BEACON_NS
AVG_INTERVAL_NS = 10 * BEACON_NS
HISTORY_LEN = 30
EWMA_ALPHA = 1 - math.exp(-1 / 10)
POLL_NS = 50_000


class _Executor(TimerOwner):
    """A slot's executor: per-model EDF queues, round-robin index, busy/idle state."""

    __slots__ = ("idle_since_ns", "queues", "rr_index", "running", "slot_id")

    def __init__(self, slot_id: int) -> None:
        super().__init__()
        self.slot_id = slot_id
        self.queues: dict[str, deque[tuple[int, int]]] = {}  # model -> (deadline, id), EDF
        self.rr_index = 0
        self.running: int | None = None  # plan id
        self.idle_since_ns = 0


class _Beacon(TimerOwner):
    __slots__ = ()


class _Route:
    """Deficit round robin over a model's slots sorted by id."""

    __slots__ = ("index", "quantum", "slots", "weights")

    def __init__(self) -> None:
        self.slots: list[int] = []
        self.weights: dict[int, float] = {}
        self.quantum: dict[int, float] = {}
        self.index = 0

    def update(self, weights: dict[int, float]) -> None:
        self.slots = sorted(s for s, w in weights.items() if w > 0)
        self.weights = {s: weights[s] for s in self.slots}
        if not self.slots:
            return
        min_rate = min(self.weights.values())
        self.quantum = {s: self.quantum.get(s, self.weights[s] / min_rate) for s in self.slots}
        self.index %= len(self.slots)

    def pick(self) -> int | None:
        if not self.slots:
            return None
        min_rate = min(self.weights.values())
        n = len(self.slots)
        for _ in range(2 * n):
            slot = self.slots[self.index]
            if self.quantum[slot] >= 1 - 1e-6:
                self.quantum[slot] -= 1
                return slot  # the index does not advance: consecutive picks
            self.quantum[slot] += self.weights[slot] / min_rate
            self.index = (self.index + 1) % n
        raise AssertionError("DRR found no slot in 2n steps")


def nexus_model(model: ModelConfig, slot_profiles: SlotProfiles) -> NexusModel:
    """The model on its raw profile (as the reference), with a variant per slot class."""
    base = NexusModel.from_latency(model.name, model.slo_ns, LatencyModel(model.profile, monotone=False))
    base.classes = {
        name: NexusModel.from_latency(model.name, model.slo_ns, latency)
        for name, latency in class_latencies(model, slot_profiles, monotone=False).items()
    }
    return base


class NexusPolicy:
    deadline_margin_ns = 0  # every batch meets recv + SLO by its own estimate

    def __init__(self, models: list[ModelConfig], *, name: str = "nexus", warm: bool = False,
                 resp_ns: int = CoreConfig().resp_ns, slot_profiles: SlotProfiles = SlotProfiles.PER_SLOT) -> None:
        self.name = name
        self.resp_ns = resp_ns  # for the shell's plans; Nexus itself plans without a reply margin
        self._warm = warm
        self._slot_profiles = slot_profiles
        self._models = {m.name: nexus_model(m, slot_profiles) for m in models}
        self._slo_ns = {m.name: m.slo_ns for m in models}
        self._hint = {m.name: m.rate_hint_rps for m in models}
        self._plans: dict[int, SlotPlan] = {}
        self._executors: dict[int, _Executor] = {}
        self._routes = {name: _Route() for name in self._models}
        self._counts = dict.fromkeys(self._models, 0)
        self._ewma = dict.fromkeys(self._models, 0.0)
        self._history: dict[str, deque[float]] = {n: deque(maxlen=HISTORY_LEN) for n in self._models}
        self._placed = False
        self._last_epoch_ns = 0
        self._last_beacon_ns = 0
        self._timers = TimerQueue()
        self._beacon = _Beacon()
        self._plan_ids = count(1)
        self._actions: list = []

    # ---- the step contract --------------------------------------------------------------
    def handle(self, event, now_ns: int) -> Step:  # noqa: ANN001 - Event union
        self._actions = []
        match event:
            case RequestArrived():
                self._place_once(now_ns)
                self._on_arrival(event, now_ns)
            case BatchCompleted() | DispatchFailed():
                executor = self._executors.get(event.slot_id)
                if executor is not None and executor.running == event.plan_id:
                    executor.running = None
                    self._run_executor(executor, now_ns)
            case SlotAdded():
                if event.slot_id not in self._plans:
                    slot_class = slot_class_of(event.slot_class, self._slot_profiles)
                    self._plans[event.slot_id] = SlotPlan(event.slot_id, slot_class=slot_class)
                    self._executors[event.slot_id] = _Executor(event.slot_id)
            case SlotRemoved():
                self._on_slot_removed(event.slot_id)
            case Shutdown():
                self._on_shutdown()
                return Step(self._actions, None)
            case WakeUp():
                pass
            case _:
                raise TypeError(f"unknown event {event!r}")
        self._run_due(now_ns)
        return Step(self._actions, self._timers.next_at())

    def stats(self, now_ns: int | None = None) -> dict[str, ModelStats]:
        """Held: queued on any executor; target: the largest planned batch; rate: the EWMA of
        per-beacon (1 s) arrival counts."""
        return {
            name: ModelStats(
                sum(len(e.queues.get(name, ())) for e in self._executors.values()),
                max((p.instances[name].batch for p in self._plans.values() if name in p.instances), default=0),
                self._ewma[name],
            )
            for name in self._models
        }

    def _run_due(self, now_ns: int) -> None:
        while (owner := self._timers.pop_due(now_ns)) is not None:
            if owner is self._beacon:
                self._on_beacon(now_ns)
            else:
                self._run_executor(owner, now_ns)

    # ---- placement and routing ----------------------------------------------------------
    def _place_once(self, now_ns: int) -> None:
        """Initial placement: each model gets one idle slot at max batch (needs slots >= models)."""
        if self._placed:
            return
        self._placed = True
        slots = list(self._plans.values())
        for model in self._models.values():
            best = find_best_slot(slots, model, 0.0, set())
            if best is not None:
                slot, inst = best
                slot.instances[model.name] = inst
                slot.recompute()
        self._last_epoch_ns = now_ns
        if self._warm:
            for name, rate in self._hint.items():
                self._ewma[name] = rate
                self._history[name].extend([rate] * HISTORY_LEN)
            self._epoch_schedule(now_ns)
        self._push_routes()
        self._last_beacon_ns = now_ns
        self._timers.arm(self._beacon, now_ns + BEACON_NS)

    def _push_routes(self) -> None:
        for name, route in self._routes.items():
            route.update({s.slot_id: s.instances[name].throughput for s in self._plans.values() if name in s.instances})

    def _on_arrival(self, event: RequestArrived, now_ns: int) -> None:
        route = self._routes.get(event.model)
        if route is None:
            self._actions.append(DropRequests(event.model, [event.request_id], DropReason.UNKNOWN_MODEL))
            return
        if self._beacon.timer_seq < 0:
            self._resume_beacon(now_ns)
        self._counts[event.model] += 1
        slot_id = route.pick()
        if slot_id is None:
            self._actions.append(DropRequests(event.model, [event.request_id], DropReason.NO_SLOT))
            return
        executor = self._executors[slot_id]
        deadline = now_ns + (event.slo_ns or self._slo_ns[event.model])
        executor.queues.setdefault(event.model, deque()).append((deadline, event.request_id))
        if executor.running is None and executor.timer_seq < 0:
            # An idle executor notices new work at its next 50 us poll.
            ticks = -(-(now_ns - executor.idle_since_ns) // POLL_NS)
            self._timers.arm(executor, executor.idle_since_ns + ticks * POLL_NS)

    # ---- the slot executor --------------------------------------------------------------
    def _run_executor(self, executor: _Executor, now_ns: int) -> None:
        """Round robin from the current model: run the first non-empty sliding-window batch,
        sized and timed on this slot's class."""
        plan = self._plans.get(executor.slot_id)
        if plan is None or executor.running is not None:
            return
        table = list(plan.batches)
        for step in range(len(table)):
            index = (executor.rr_index + step) % len(table)
            name = table[index]
            model = self._models[name].on(plan.slot_class)
            batch = self._sliding_window(executor, model, plan.batches[name], now_ns)
            if batch:
                plan_id = next(self._plan_ids)
                finish = now_ns + int(model.l(len(batch)) * 1000)
                executor.running = plan_id
                executor.rr_index = (index + 1) % len(table)
                self._actions.append(DispatchBatch(plan_id, executor.slot_id, name, batch, now_ns, finish))
                return
        executor.idle_since_ns = now_ns

    def _sliding_window(self, executor: _Executor, model: NexusModel, batch_plan: int, now_ns: int) -> list[int]:
        """Early drop: take up to the planned batch in EDF order, dropping requests that would
        miss their deadline at that batch's finish on this slot (`model` is the slot's variant)."""
        name = model.name
        queue = executor.queues.get(name)
        if not queue:
            return []
        size = min(batch_plan, len(queue))
        if size == 0:
            return []
        finish = now_ns + int(model.l(size) * 1000)
        inputs: list[int] = []
        drops: list[int] = []
        while len(inputs) < size and queue:
            deadline, rid = queue.popleft()
            (drops if deadline < finish else inputs).append(rid)
            if size > len(inputs) + len(queue):
                size = len(inputs) + len(queue)
                if size > 0:
                    finish = now_ns + int(model.l(size) * 1000)
        if drops:
            self._actions.append(DropRequests(name, drops, DropReason.DEADLINE))
        return inputs

    # ---- rate estimation and epochs -----------------------------------------------------
    def _resume_beacon(self, now_ns: int) -> None:
        """The beacon sleeps while the system is idle (so a run can end); on the next arrival
        the missed beacons are applied with zero counts and the beacon grid resumes."""
        missed = (now_ns - self._last_beacon_ns) // BEACON_NS
        for _ in range(min(missed, 2 * HISTORY_LEN)):
            self._sample_rates()
        self._last_beacon_ns += missed * BEACON_NS
        self._timers.arm(self._beacon, self._last_beacon_ns + BEACON_NS)

    def _sample_rates(self) -> None:
        for name in self._models:
            count_ = self._counts[name]
            self._counts[name] = 0
            self._ewma[name] += EWMA_ALPHA * (count_ - self._ewma[name])
            sample = max(0.0, self._ewma[name])
            if self._history[name] or sample > 0:
                self._history[name].append(sample)

    def _on_beacon(self, now_ns: int) -> None:
        self._last_beacon_ns = now_ns
        had_arrivals = any(self._counts.values())
        self._sample_rates()
        trigger = False
        for name in self._models:
            history = self._history[name]
            if len(history) < HISTORY_LEN:
                continue
            est = max(history[-1], 0.1)
            tp = self._throughput(name)
            trigger |= est < 0.8 * tp or est > 1.1 * tp
        since = now_ns - self._last_epoch_ns
        if (trigger and since >= AVG_INTERVAL_NS) or since >= EPOCH_NS:
            self._epoch_schedule(now_ns)
            self._push_routes()
            for executor in self._executors.values():
                if executor.running is None:
                    self._run_executor(executor, now_ns)
        busy = any(e.running is not None or any(e.queues.values()) for e in self._executors.values())
        if had_arrivals or busy:
            self._timers.arm(self._beacon, now_ns + BEACON_NS)

    def _throughput(self, name: str) -> float:
        return sum(s.instances[name].throughput for s in self._plans.values() if name in s.instances)

    def _epoch_schedule(self, now_ns: int) -> None:
        self._last_epoch_ns = now_ns
        unassigned: dict[str, float] = {}
        overloaded: list[SlotPlan] = []
        for name, model in self._models.items():
            history = self._history[name]
            if len(history) < HISTORY_LEN:
                continue
            est = max(history[-1], 0.1)
            tp = self._throughput(name)
            unassigned[name] = max(0.0, est - tp)
            holders = sorted(
                (s for s in self._plans.values() if name in s.instances),
                key=lambda s: -s.instances[name].throughput,
            )
            remaining = est
            if est < 0.97 * tp:
                for slot in holders:
                    weight = slot.instances[name].throughput
                    if remaining < 1e-3:
                        self._unload(slot, name)
                    elif weight > remaining:
                        remaining -= self._update_throughput(slot, model, remaining)
                    else:
                        remaining -= weight
            elif est > tp:
                for slot in holders:
                    if remaining < 1e-3:
                        self._unload(slot, name)
                        continue
                    remaining -= self._update_throughput(slot, model, remaining)
                    if slot.overload and slot.occupancy > 1.05 and slot not in overloaded:
                        overloaded.append(slot)
                unassigned[name] = remaining if remaining > 1e-3 else 0.0
        for slot in overloaded:
            self._spill(slot, unassigned)
        self._allocate(unassigned)

    def _update_throughput(self, slot: SlotPlan, model: NexusModel, workload: float) -> float:
        """Re-plan the model's instance on the slot (on its class) for `workload`."""
        inst = compute_batch_size(model.on(slot.slot_class), workload)
        if inst is None:
            return slot.instances[model.name].throughput
        slot.instances[model.name] = inst
        slot.recompute()
        return inst.throughput

    def _unload(self, slot: SlotPlan, name: str) -> None:
        del slot.instances[name]
        slot.recompute()

    def _spill(self, slot: SlotPlan, unassigned: dict[str, float]) -> None:
        """Re-pack an overloaded slot in descending forward latency; spill what no longer fits."""
        instances = sorted(slot.instances.values(), key=lambda i: -i.model.l(i.batch or 1))
        slot.instances.clear()
        slot.recompute()
        for inst in instances:
            trial = SlotPlan(slot.slot_id, dict(slot.instances), slot_class=slot.slot_class)
            trial.recompute()
            prepared = prepare_load(trial, inst.model, inst.workload)
            if prepared is None:
                unassigned[inst.model.name] = unassigned.get(inst.model.name, 0.0) + inst.throughput
                continue
            slot.instances[inst.model.name] = prepared[1]
            slot.recompute()

    def _allocate(self, unassigned: dict[str, float]) -> None:
        for name in sorted(unassigned, key=lambda n: -unassigned[n]):
            load = unassigned[name]
            model = self._models[name]
            while load > 1e-3:
                skip = {s.slot_id for s in self._plans.values() if name in s.instances}
                best = find_best_slot(list(self._plans.values()), model, load, skip)
                if best is None:
                    break
                slot, inst = best
                slot.instances[name] = inst
                slot.recompute()
                load -= inst.throughput

    # ---- slots going away, shutdown -----------------------------------------------------
    def _on_slot_removed(self, slot_id: int) -> None:
        self._plans.pop(slot_id, None)
        executor = self._executors.pop(slot_id, None)
        if executor is None:
            return
        self._timers.cancel(executor)
        for name, queue in executor.queues.items():
            if queue:
                self._actions.append(DropRequests(name, [rid for _d, rid in queue], DropReason.NO_SLOT))
        self._push_routes()

    def _on_shutdown(self) -> None:
        for executor in self._executors.values():
            for name, queue in executor.queues.items():
                if queue:
                    self._actions.append(DropRequests(name, [rid for _d, rid in queue], DropReason.SHUTDOWN))
                    queue.clear()
        self._timers.cancel(self._beacon)
        for executor in self._executors.values():
            self._timers.cancel(executor)
