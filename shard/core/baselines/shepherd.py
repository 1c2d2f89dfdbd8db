"""Shepherd's online "flex" scheduler (reference §4.2), and Clockwork-like as its lambda = inf.

Idea. Work-conserving and eager: an arrival to an idle slot is dispatched at once with whatever
that model has queued; when a slot completes it runs the largest deadline-feasible batch across
all models; a busy slot is preempted when a new feasible batch is at least lambda times the
running one (the preempted slot time is lost and its requests are re-queued).

Modes (reported by name):
- faithful (`shepherd`): "Line 4" drops from the queue's LATEST-deadline end (rbegin), so an
  expired head is never dropped while newer requests are feasible and the model stalls; after a
  preemption the NEW batch's model is re-triggered (quirk 2); slots in insertion order.
- fixed (`shepherd-fixed`, and `clockwork` with lambda = inf): drops expired requests from the
  head, and re-triggers the preempted batch's model.
Constants are Shepherd's own (Dctrl 25 us, Ddata 75 us per request), deadlines are recv + SLO
with no response margin, and estimates use l(b) without pre/post (reference §4.2).

Mixed fleets (issue 16, `per_slot` mode): BatchGen runs for one slot at a time, so it uses that
slot's class table throughout: the "Line 4" drop, the feasible batch and the predicted finish.
A fast slot thus takes a larger batch (and drops less) than a slow one; a request is dropped when
it cannot finish alone on the slot being offered, as Shepherd's per-GPU BatchGen would.
"""

from __future__ import annotations

import bisect
from itertools import count, pairwise

from shard.core.actions import DispatchBatch, DropReason, DropRequests, PreemptBatch, Step
from shard.core.baselines.slot_classes import class_latencies, slot_class_of
from shard.core.config import CoreConfig, ModelConfig, SlotProfiles
from shard.core.events import BatchCompleted, DispatchFailed, RequestArrived, Shutdown, SlotAdded, SlotRemoved, WakeUp
from shard.core.latency import LatencyModel
from shard.core.policy import ModelStats

Entry = tuple[int, int]  # (deadline_ns, request_id)


class _Running:
    __slots__ = ("entries", "model", "plan_id")

    def __init__(self, plan_id: int, model: str, entries: list[Entry]) -> None:
        self.plan_id = plan_id
        self.model = model
        self.entries = entries


class _Table:
    """l(b) on one slot class, raw as the reference's, and whether it never decreases (then the
    feasible size is a binary search rather than a scan)."""

    __slots__ = ("forward_ns", "monotone")

    def __init__(self, latency: LatencyModel) -> None:
        self.forward_ns = latency.forward_ns
        self.monotone = all(a <= b for a, b in pairwise(self.forward_ns))


class _Model:
    __slots__ = ("by_class", "name", "queue", "slo_ns", "slowest")

    def __init__(self, model: ModelConfig, slot_profiles: SlotProfiles) -> None:
        self.name = model.name
        self.slo_ns = model.slo_ns
        self.slowest = _Table(LatencyModel(model.profile, monotone=False))  # raw profile, as the reference
        self.by_class = {
            name: _Table(latency) for name, latency in class_latencies(model, slot_profiles, monotone=False).items()
        }
        self.queue: list[Entry] = []  # sorted by (deadline, id)

    def table(self, slot_class: str) -> _Table:
        """The table a slot of this class is planned with; the slowest for "" or an unknown class."""
        return self.by_class.get(slot_class, self.slowest)


class ShepherdPolicy:
    deadline_margin_ns = 0  # every batch is predicted (by its own estimate) to meet recv + SLO

    def __init__(
        self,
        models: list[ModelConfig],
        *,
        name: str = "shepherd",
        preempt_lambda: float = 3.03,
        fixed: bool = False,
        ctrl_ns: int = 25_000,
        data_ns: int = 75_000,
        queue_len_max: int = 100_000,
        resp_ns: int = CoreConfig().resp_ns,
        slot_profiles: SlotProfiles = SlotProfiles.PER_SLOT,
    ) -> None:
        self.name = name
        self.resp_ns = resp_ns  # for the shell's plans; Shepherd itself plans without a reply margin
        self._lambda = preempt_lambda
        self._fixed = fixed
        self._ctrl_ns = ctrl_ns
        self._data_ns = data_ns
        self._queue_len_max = queue_len_max
        self._models = {m.name: _Model(m, slot_profiles) for m in models}
        self._slot_profiles = slot_profiles
        self._slots: dict[int, _Running | None] = {}
        self._classes: dict[int, str] = {}  # slot -> the class its batches are planned with
        self._rank: dict[int, int] = {}  # slot -> place in the preference order
        self._plan_ids = count(1)
        self._actions: list = []

    def handle(self, event, now_ns: int) -> Step:  # noqa: ANN001 - Event union
        self._actions = []
        match event:
            case RequestArrived():
                self._on_arrival(event, now_ns)
            case BatchCompleted() | DispatchFailed():
                self._on_completed(event.slot_id, event.plan_id, now_ns)
            case SlotAdded():
                if event.slot_id not in self._slots:
                    self._slots[event.slot_id] = None
                    self._classes[event.slot_id] = slot_class_of(event.slot_class, self._slot_profiles)
                    # Arrivals offer slots in this order: keep it the preference order (issue 13).
                    self._rank[event.slot_id] = event.slot_id if event.rank is None else event.rank
                    self._slots = dict(sorted(self._slots.items(), key=lambda item: self._rank[item[0]]))
                    self._on_idle(event.slot_id, now_ns)
            case SlotRemoved():
                self._slots.pop(event.slot_id, None)
                self._classes.pop(event.slot_id, None)
                self._rank.pop(event.slot_id, None)
            case Shutdown():
                for model in self._models.values():
                    if model.queue:
                        self._actions.append(
                            DropRequests(model.name, [rid for _d, rid in model.queue], DropReason.SHUTDOWN)
                        )
                        model.queue.clear()
            case WakeUp():
                pass
            case _:
                raise TypeError(f"unknown event {event!r}")
        return Step(self._actions, None)

    # ---- events -------------------------------------------------------------------------
    def _on_arrival(self, event: RequestArrived, now_ns: int) -> None:
        model = self._models.get(event.model)
        if model is None:
            self._actions.append(DropRequests(event.model, [event.request_id], DropReason.UNKNOWN_MODEL))
            return
        if len(model.queue) >= self._queue_len_max:
            self._actions.append(DropRequests(model.name, [event.request_id], DropReason.OVERLOADED))
            return
        entry = (now_ns + (event.slo_ns or model.slo_ns), event.request_id)
        if not model.queue or model.queue[-1] < entry:
            model.queue.append(entry)
        else:
            bisect.insort(model.queue, entry)
        changed = [model.name]
        while changed:
            name = changed.pop(0)
            empty_classes: list[str] = []  # an idle slot of these classes found no batch
            for slot_id, running in list(self._slots.items()):
                if running is None:
                    slot_class = self._classes[slot_id]
                    if slot_class in empty_classes:
                        continue  # same queues and table as the idle slot just tried: no batch either
                    if not self._offer(slot_id, running, name, changed, now_ns):
                        empty_classes.append(slot_class)
                elif self._could_preempt(running, name):
                    self._offer(slot_id, running, name, changed, now_ns)

    def _could_preempt(self, running: _Running, name: str) -> bool:
        """Skip BatchGen on a busy slot when even every queued request could not reach lambda
        times its batch (the skipped call would only have dropped expired requests earlier)."""
        most = len(self._models[name].queue) + len(running.entries)
        if running.model != name:
            most += len(self._models[running.model].queue)
        return most >= self._lambda * len(running.entries)

    def _offer(self, slot_id: int, running: _Running | None, name: str, changed: list[str], now_ns: int) -> bool:
        """AddQuery's inner step: dispatch to an idle slot, or preempt by the lambda rule.
        Returns whether BatchGen found a batch."""
        old = len(running.entries) if running else 0
        candidates = [name] if running is None or running.model == name else [name, running.model]
        best = self._batch_gen(now_ns, running, candidates, self._classes[slot_id])
        if best is None:
            return False
        model_name, size = best
        if old == 0:
            self._assign(slot_id, model_name, size, None, now_ns)
        elif size >= self._lambda * old:
            self._assign(slot_id, model_name, size, running, now_ns)
            retrigger = running.model if self._fixed else model_name
            if retrigger != name and retrigger not in changed:
                changed.append(retrigger)
        return True

    def stats(self, now_ns: int | None = None) -> dict[str, ModelStats]:
        """Shepherd keeps neither a rate estimate nor a target batch size."""
        return {name: ModelStats(len(m.queue), 0, 0.0) for name, m in self._models.items()}

    def _on_completed(self, slot_id: int, plan_id: int, now_ns: int) -> None:
        running = self._slots.get(slot_id)
        if running is None or running.plan_id != plan_id:
            return  # preempted, or a slot we no longer hold
        self._slots[slot_id] = None
        self._on_idle(slot_id, now_ns)

    def _on_idle(self, slot_id: int, now_ns: int) -> None:
        best = self._batch_gen(now_ns, None, list(self._models), self._classes[slot_id])
        if best is not None:
            self._assign(slot_id, best[0], best[1], None, now_ns)

    # ---- BatchGen -----------------------------------------------------------------------
    def _batch_gen(
        self, now_ns: int, running: _Running | None, names: list[str], slot_class: str
    ) -> tuple[str, int] | None:
        """The model with the largest feasible batch (ties: first in order) on a slot of
        `slot_class`, and its size."""
        best: tuple[str, int] | None = None
        for name in names:
            model = self._models[name]
            table = model.table(slot_class)
            self._drop_expired(model, table, now_ns)
            extra = running.entries if running is not None and running.model == name else []
            size = self._feasible_size(model, table, extra, now_ns)
            if size and (best is None or size > best[1]):
                best = (name, size)
        return best

    def _drop_expired(self, model: _Model, table: _Table, now_ns: int) -> None:
        """"Line 4": requests that cannot finish even alone on the offered slot's class are
        dropped (see the module note)."""
        queue = model.queue
        limit = now_ns + self._ctrl_ns + self._data_ns + table.forward_ns[1]
        dropped: list[int] = []
        if self._fixed:
            k = 0
            while k < len(queue) and queue[k][0] < limit:
                k += 1
            dropped = [rid for _d, rid in queue[:k]]
            del queue[:k]
        else:
            while queue and queue[-1][0] < limit:
                dropped.append(queue.pop()[1])
        if dropped:
            self._actions.append(DropRequests(model.name, dropped, DropReason.DEADLINE))

    def _feasible_size(self, model: _Model, table: _Table, extra: list[Entry], now_ns: int) -> int:
        """Greedy over S = extra ++ queue in deadline order: the longest prefix whose earliest
        deadline holds at that batch size on the offered slot's class (the earliest deadline is
        S's first, S being sorted)."""
        total = len(extra) + len(model.queue)
        if total == 0:
            return 0
        head = min(extra[0][0] if extra else model.queue[0][0], model.queue[0][0] if model.queue else extra[0][0])
        forward = table.forward_ns
        top = min(total, len(forward) - 2)
        base = now_ns + self._ctrl_ns

        def fits(b: int) -> bool:
            return head >= base + self._data_ns * b + forward[b]

        if not fits(1):
            return 0
        if not table.monotone:
            b = 1
            while b < top and fits(b + 1):
                b += 1
            return b
        low, high = 1, top
        while low < high:
            mid = (low + high + 1) >> 1
            if fits(mid):
                low = mid
            else:
                high = mid - 1
        return low

    # ---- assignment ---------------------------------------------------------------------
    def _assign(self, slot_id: int, name: str, size: int, preempted: _Running | None, now_ns: int) -> None:
        """Run the batch BatchGen sized for this slot; its finish is predicted on the slot's class."""
        model = self._models[name]
        if preempted is not None:
            self._actions.append(PreemptBatch(slot_id, preempted.plan_id))
            requeue = self._models[preempted.model]
            requeue.queue = sorted(requeue.queue + preempted.entries)
        entries = model.queue[:size]
        del model.queue[:size]
        exec_at = now_ns + self._ctrl_ns + self._data_ns * size
        finish_at = exec_at + model.table(self._classes[slot_id]).forward_ns[size]
        plan_id = next(self._plan_ids)
        self._slots[slot_id] = _Running(plan_id, name, entries)
        self._actions.append(
            DispatchBatch(plan_id, slot_id, name, [rid for _d, rid in entries], exec_at, finish_at)
        )
