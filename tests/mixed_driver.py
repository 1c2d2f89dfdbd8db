"""A small driver for one Symphony policy on slots of different speeds (issue 16), for the core's
own tests before any simulator: arrivals at given times, timers, and completions exactly when the
slot's true profile says. It checks every dispatch on the slot it runs on."""

from __future__ import annotations

import heapq

from shard.core.actions import DispatchBatch, DropRequests, Step
from shard.core.config import CoreConfig, ModelConfig
from shard.core.events import WAKE_UP, BatchCompleted, RequestArrived, SlotAdded
from shard.core.latency import LatencyModel
from shard.core.symphony import SymphonyPolicy


class MixedRun:
    """Runs the policy; `slot_classes[i]` is slot i's class. Records dispatches and drops."""

    def __init__(self, models: list[ModelConfig], slot_classes: list[str], config: CoreConfig | None = None,
                 true_models: list[ModelConfig] | None = None) -> None:
        """`true_models` (default `models`) give the slots' true speeds."""
        self.policy = SymphonyPolicy(models, config or CoreConfig())
        self.models = {m.name: m for m in models}
        self.slot_classes = slot_classes
        self.true = {(m.name, c): LatencyModel(m.class_profiles.get(c, m.profile))
                     for m in true_models or models for c in slot_classes}
        self.dispatches: list[DispatchBatch] = []
        self.dropped: list[int] = []
        self.deadline: dict[int, int] = {}
        self.slot_free: dict[int, int] = dict.fromkeys(range(len(slot_classes)), 0)
        self._events: list[tuple[int, int, object]] = []
        self._seq = 0
        self._wake: int | None = None
        for slot, cls in enumerate(slot_classes):
            self._apply(self.policy.handle(SlotAdded(slot, slot_class=cls), 0), 0)

    def _push(self, at_ns: int, event: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_ns, self._seq, event))

    def _apply(self, step: Step, now_ns: int) -> None:
        for action in step.actions:
            if isinstance(action, DispatchBatch):
                self._run(action, now_ns)
            elif isinstance(action, DropRequests):
                self.dropped.extend(action.request_ids)
        self._wake = step.wake_at_ns

    def _run(self, plan: DispatchBatch, now_ns: int) -> None:
        cls = self.slot_classes[plan.slot_id]
        true_ns = self.true[(plan.model, cls)].exec_ns[len(plan.request_ids)]
        assert plan.finish_at_ns - plan.exec_at_ns >= true_ns, "predicted on a faster device than the slot's"
        assert plan.exec_at_ns >= now_ns
        start = max(plan.exec_at_ns, self.slot_free[plan.slot_id])
        assert start == plan.exec_at_ns, "dispatched onto a slot still busy"
        finish = start + true_ns
        self.slot_free[plan.slot_id] = finish
        for request in plan.request_ids:
            assert finish <= self.deadline[request], "a dispatch predicted to miss its deadline"
        self.dispatches.append(plan)
        self._push(finish, BatchCompleted(plan.slot_id, plan.plan_id, start, finish))

    def run(self, arrivals: list[tuple[int, str]], resp_ns: int = 2_000_000) -> None:
        """`arrivals`: (time, model) in time order; runs until nothing is left."""
        for request_id, (at_ns, model) in enumerate(arrivals):
            self._push(at_ns, RequestArrived(request_id, model))
            self.deadline[request_id] = at_ns + self.models[model].slo_ns - resp_ns
        while self._events or self._wake is not None:
            if self._wake is not None and (not self._events or self._wake <= self._events[0][0]):
                now, self._wake = self._wake, None
                self._apply(self.policy.handle(WAKE_UP, now), now)
                continue
            now, _seq, event = heapq.heappop(self._events)
            self._apply(self.policy.handle(event, now), now)

    def answered(self) -> int:
        return sum(len(d.request_ids) for d in self.dispatches) + len(self.dropped)
