"""Triton's dynamic batcher semantics on a shared pool of slots.

Per model a FIFO queue. A batch leaves when the queue holds `batch_size_max` requests (or a
preferred size), or when its oldest request has waited `max_queue_delay`; any free slot takes
it (oldest waiting head first across models). Requests that have waited longer than the queue
timeout are rejected (Triton's default `timeout_action: REJECT`). Triton knows nothing about
deadlines or latency: it never predicts whether a batch will meet its SLO.

Defaults stand in for a careful operator: the max batch is the largest whose run time fits half
the SLO budget (Nexus's rule), the max queue delay is the slack left when that batch runs, and
the queue timeout is the wait after which even a batch of one cannot meet the SLO.

Mixed fleets (issue 16, `per_slot` mode): the settings stay on `ModelConfig.profile`, the slowest
(an operator configures one dynamic batcher per model, and Triton is SLO-blind), so a batch is the
same size on every slot; only its predicted finish uses the class of the slot that runs it.
"""

from __future__ import annotations

from collections import deque
from itertools import count

import msgspec

from shard.core.actions import DispatchBatch, DropReason, DropRequests, Step
from shard.core.baselines.slot_classes import class_latencies, slot_class_of
from shard.core.config import CoreConfig, ModelConfig, SlotChoice
from shard.core.events import BatchCompleted, DispatchFailed, RequestArrived, Shutdown, SlotAdded, SlotRemoved, WakeUp
from shard.core.latency import LatencyModel
from shard.core.policy import ModelStats


class TritonModelSettings(msgspec.Struct, frozen=True, kw_only=True):
    batch_size_max: int
    preferred_batch_sizes: list[int] = []
    max_queue_delay_ns: int
    queue_timeout_ns: int  # 0: no timeout


def default_settings(model: ModelConfig, config: CoreConfig) -> TritonModelSettings:
    latency = LatencyModel(model.profile)
    budget_ns = model.slo_ns - config.resp_ns
    batch_max = 1
    for b in range(1, latency.batch_size_max + 1):
        if latency.exec_ns[b] + config.ctrl_ns + config.data_ns * b <= budget_ns // 2:
            batch_max = b
    delay = budget_ns - latency.exec_ns[batch_max] - config.ctrl_ns - config.data_ns * batch_max
    timeout = budget_ns - latency.exec_ns[1] - config.ctrl_ns - config.data_ns
    return TritonModelSettings(
        batch_size_max=batch_max,
        max_queue_delay_ns=max(0, delay),
        queue_timeout_ns=max(1, timeout),
    )


class _Model:
    __slots__ = ("by_class", "latency", "name", "queue", "settings")

    def __init__(self, model: ModelConfig, settings: TritonModelSettings, config: CoreConfig) -> None:
        self.name = model.name
        self.latency = LatencyModel(model.profile)
        self.by_class = class_latencies(model, config.slot_profiles, monotone=True)  # finish per slot only
        self.settings = settings
        self.queue: deque[tuple[int, int]] = deque()  # (recv_ns, request_id), FIFO


class TritonPolicy:
    deadline_margin_ns = None

    def __init__(
        self,
        models: list[ModelConfig],
        config: CoreConfig | None = None,
        settings: dict[str, TritonModelSettings] | None = None,
        *,
        name: str = "triton",
    ) -> None:
        self.name = name
        self.config = config = config or CoreConfig()
        self.resp_ns = config.resp_ns
        settings = settings or {}
        self._models = {
            m.name: _Model(m, settings.get(m.name) or default_settings(m, config), config) for m in models
        }
        self._free: deque[int] = deque()  # free slots, longest idle first
        self._rank: dict[int, tuple[int, int]] = {}  # slot -> (rank, slot): with slot_choice preferred,
        self._preferred = config.slot_choice is SlotChoice.PREFERRED  # the lowest-ranked free slot goes first
        self._slots: dict[int, int | None] = {}  # slot -> running plan id
        self._classes: dict[int, str] = {}  # slot -> the class its finish is predicted with
        self._plan_ids = count(1)
        self._actions: list = []

    def handle(self, event, now_ns: int) -> Step:  # noqa: ANN001 - Event union
        self._actions = []
        match event:
            case RequestArrived():
                self._on_arrival(event, now_ns)
            case BatchCompleted() | DispatchFailed():
                if self._slots.get(event.slot_id) == event.plan_id:
                    self._slots[event.slot_id] = None
                    self._free.append(event.slot_id)
            case SlotAdded():
                if event.slot_id not in self._slots:
                    self._slots[event.slot_id] = None
                    self._free.append(event.slot_id)
                    self._classes[event.slot_id] = slot_class_of(event.slot_class, self.config.slot_profiles)
                    self._rank[event.slot_id] = (event.slot_id if event.rank is None else event.rank, event.slot_id)
            case SlotRemoved():
                self._rank.pop(event.slot_id, None)
                self._classes.pop(event.slot_id, None)
                if self._slots.pop(event.slot_id, 0) is None:
                    self._free.remove(event.slot_id)
            case Shutdown():
                for model in self._models.values():
                    if model.queue:
                        held = [rid for _recv, rid in model.queue]
                        model.queue.clear()
                        self._actions.append(DropRequests(model.name, held, DropReason.SHUTDOWN))
                return Step(self._actions, None)
            case WakeUp():
                pass
            case _:
                raise TypeError(f"unknown event {event!r}")
        return Step(self._actions, self._schedule(now_ns))

    def stats(self, now_ns: int | None = None) -> dict[str, ModelStats]:
        """Triton keeps no rate estimate; its target is the max batch it waits for."""
        return {name: ModelStats(len(m.queue), m.settings.batch_size_max, 0.0) for name, m in self._models.items()}

    def _on_arrival(self, event: RequestArrived, now_ns: int) -> None:
        model = self._models.get(event.model)
        if model is None:
            self._actions.append(DropRequests(event.model, [event.request_id], DropReason.UNKNOWN_MODEL))
            return
        if len(model.queue) >= self.config.queue_len_max:
            self._actions.append(DropRequests(model.name, [event.request_id], DropReason.OVERLOADED))
            return
        model.queue.append((now_ns, event.request_id))

    def _schedule(self, now_ns: int) -> int | None:
        """Reject timed-out heads, hand free slots to ready models; return the next wake-up."""
        for model in self._models.values():
            self._expire(model, now_ns)
        while self._free:
            model = self._oldest_ready(now_ns)
            if model is None:
                break
            self._dispatch(model, self._take_free(), now_ns)
        return self._next_wake(now_ns)

    def _take_free(self) -> int:
        """The free slot a batch takes: the longest idle (Triton's own), or the most preferred."""
        if not self._preferred:
            return self._free.popleft()
        slot = min(self._free, key=self._rank.__getitem__)
        self._free.remove(slot)
        return slot

    def _expire(self, model: _Model, now_ns: int) -> None:
        timeout = model.settings.queue_timeout_ns
        queue = model.queue
        if not timeout or not queue or queue[0][0] + timeout > now_ns:
            return
        expired = []
        while queue and queue[0][0] + timeout <= now_ns:
            expired.append(queue.popleft()[1])
        self._actions.append(DropRequests(model.name, expired, DropReason.QUEUE_TIMEOUT))

    def _is_ready(self, model: _Model, now_ns: int) -> bool:
        queue = model.queue
        if not queue:
            return False
        settings = model.settings
        if len(queue) >= settings.batch_size_max:
            return True
        if any(len(queue) >= size for size in settings.preferred_batch_sizes):
            return True
        return now_ns - queue[0][0] >= settings.max_queue_delay_ns

    def _oldest_ready(self, now_ns: int) -> _Model | None:
        best = None
        for model in self._models.values():
            if self._is_ready(model, now_ns) and (best is None or model.queue[0] < best.queue[0]):
                best = model
        return best

    def _dispatch(self, model: _Model, slot_id: int, now_ns: int) -> None:
        """Send the ready batch (sized by the settings alone) to `slot_id`; its finish is
        predicted on that slot's class."""
        settings = model.settings
        size = min(len(model.queue), settings.batch_size_max)
        fitting = [p for p in settings.preferred_batch_sizes if p <= size]
        if fitting and size < settings.batch_size_max:
            size = max(fitting)
        batch = [model.queue.popleft()[1] for _ in range(size)]
        exec_at = now_ns + self.config.ctrl_ns + self.config.data_ns * size
        finish_at = exec_at + model.by_class.get(self._classes[slot_id], model.latency).exec(size)
        plan_id = next(self._plan_ids)
        self._slots[slot_id] = plan_id
        self._actions.append(DispatchBatch(plan_id, slot_id, model.name, batch, exec_at, finish_at))

    def _next_wake(self, now_ns: int) -> int | None:
        wake = None
        for model in self._models.values():
            if not model.queue:
                continue
            head_recv = model.queue[0][0]
            candidates = []
            if self._free:
                candidates.append(head_recv + model.settings.max_queue_delay_ns)
            if model.settings.queue_timeout_ns:
                candidates.append(head_recv + model.settings.queue_timeout_ns)
            for at in candidates:
                if at > now_ns and (wake is None or at < wake):
                    wake = at
        return wake
