"""Symphony: deferred batch scheduling with a schedulable window per model (reference §1).

Idea. Each model keeps ONE candidate batch `(batch_size, exec_at, invalid_after)` planned from
its EDF queue by the incremental batch policy. Under the default Frontrun condition the batch is
held back until waiting for one more request would no longer be safe (`exec_at`), and it stays
valid until `invalid_after`, the last start that still meets the head deadline: that interval is
the schedulable window. A matcher grants the earliest-free slot to a candidate when its send
time comes, if the slot is free by `exec_at`; otherwise the candidate waits, and a single slot
timer offers the earliest-free slot to the least-slack waiting candidate shortly before the slot
frees. On a grant the model re-plans against that slot's free time and dispatches.

This module owns the event handling and timers; the pieces it calls are pure helpers:
`batching.BatchQueue`, `rate_meter.RateMeter`, `target_batch`, `matcher.Matcher`.
Deliberate departures from the prototype: P3 (one slot timer on the current rank-0 slot),
P4 (an empty grant frees the slot at max(now, free_at)), and lazily sealed rate bins.
"""

from __future__ import annotations

from collections import deque
from itertools import count

from shard.core.actions import DispatchBatch, DropReason, DropRequests, Step
from shard.core.batching import largest_meeting
from shard.core.config import CoreConfig, DropPolicy, ModelConfig, SchedulableCondition, SlotChoice, SlotProfiles
from shard.core.events import (
    BatchCompleted,
    DispatchFailed,
    ModelAdded,
    ModelRemoved,
    RequestArrived,
    Shutdown,
    SlotAdded,
    SlotRemoved,
    WakeUp,
)
from shard.core.latency import NEVER_BEFORE_NS, NEVER_NS, LatencyModel
from shard.core.matcher import Matcher
from shard.core.model_state import ModelState, SlotTimer, plan_with
from shard.core.policy import ModelStats
from shard.core.slot_classes import SlotClasses, base_latency, class_speeds, differs, fit_classes
from shard.core.target_batch import estimate_target_batch_size
from shard.core.timers import TimerQueue
from shard.core.utilization import UtilizationMeter


class SymphonyPolicy:
    """The faithful Symphony policy; `eager` is this class with Immediately + DropTimeout."""

    __slots__ = (
        "_actions",
        "_classes",
        "_ctrl_ns",
        "_data_ns",
        "_drop_timeout",
        "_early",
        "_frontrun_mode",
        "_inflight",
        "_jitter_ns",
        "_matcher",
        "_mixed",
        "_models",
        "_guard_overload",
        "_overloaded",
        "_overload_checked_ns",
        "_plan_ids",
        "_preferred",
        "_pack_guard_ns",
        "_per_slot",
        "_queue_len_max",
        "_schedulable",
        "_slot_timer",
        "_timers",
        "_utilization",
        "config",
        "deadline_margin_ns",
        "name",
        "resp_ns",
    )

    def __init__(
        self,
        models: list[ModelConfig],
        config: CoreConfig | None = None,
        *,
        name: str = "symphony",
        now_ns: int = 0,
    ) -> None:
        self.name = name
        self.config = config = config or CoreConfig()
        self.deadline_margin_ns = None if config.drop is DropPolicy.WINDOW_FCFS else config.resp_ns
        self._models: dict[str, ModelState] = {m.name: ModelState(m, config, now_ns) for m in models}
        self._matcher = Matcher()
        self._timers = TimerQueue()
        self._slot_timer = SlotTimer()
        self._inflight: dict[int, deque[tuple[int, int, int]]] = {}  # slot -> (plan, exec, finish)
        self._plan_ids = count(1)
        self._actions: list = []
        self._ctrl_ns = config.ctrl_ns
        self._data_ns = config.data_ns
        self.resp_ns = config.resp_ns
        self._jitter_ns = config.timer_jitter_ns
        self._schedulable = config.schedulable
        self._frontrun_mode = config.schedulable is SchedulableCondition.FRONTRUN
        self._drop_timeout = config.drop is DropPolicy.DROP_TIMEOUT
        self._queue_len_max = config.queue_len_max
        self._preferred = config.slot_choice is SlotChoice.PREFERRED
        self._pack_guard_ns = config.pack_guard_ns
        self._early = config.early_dispatch and config.schedulable is SchedulableCondition.FRONTRUN
        self._utilization = UtilizationMeter(config.rate_bin_ns, config.utilization_alpha, now_ns)
        self._overloaded = False
        self._guard_overload = config.overload_demand_min > 0 and (config.drop_beta < 1 or config.early_dispatch)
        self._overload_checked_ns = now_ns
        self._classes = SlotClasses()  # issue 16: mixed fleets
        self._per_slot = config.slot_profiles is SlotProfiles.PER_SLOT
        self._mixed = False  # the classes present give some model more than one latency

    # ---- the step contract --------------------------------------------------------------
    def handle(self, event, now_ns: int) -> Step:  # noqa: ANN001 - Event union
        self._actions = []
        if event.__class__ is RequestArrived:  # the hot path, ahead of the match below
            self._on_arrival(event, now_ns)
            wake_at = self._timers.next_at()
            if wake_at is not None and wake_at <= now_ns:
                self._run_due_timers(now_ns)
                wake_at = self._timers.next_at()
            return Step(self._actions, wake_at)
        match event:
            case WakeUp():
                pass
            case BatchCompleted():
                self._on_completed(event.slot_id, event.plan_id, event.finished_at_ns)
            case DispatchFailed():
                self._on_completed(event.slot_id, event.plan_id, now_ns)  # as if it finished now
            case SlotAdded():
                rank = event.slot_id if event.rank is None else event.rank
                slot_class = event.slot_class if self._per_slot else ""
                self._on_slot_added(event.slot_id, max(now_ns, event.free_at_ns), rank, slot_class, now_ns)
            case SlotRemoved():
                self._on_slot_removed(event.slot_id, now_ns)
            case ModelAdded():
                if event.model.name not in self._models:
                    self._on_model_added(event.model, now_ns)
            case ModelRemoved():
                self._on_model_removed(event.model)
            case Shutdown():
                self._on_shutdown()
            case _:
                raise TypeError(f"unknown event {event!r}")
        self._run_due_timers(now_ns)
        return Step(self._actions, self._timers.next_at())

    # ---- event arms ---------------------------------------------------------------------
    def _on_arrival(self, event: RequestArrived, now_ns: int) -> None:
        model = self._models.get(event.model)
        if model is None:
            self._actions.append(DropRequests(event.model, [event.request_id], DropReason.UNKNOWN_MODEL))
            return
        queue = model.queue
        if queue.count >= self._queue_len_max:
            self._actions.append(DropRequests(model.name, [event.request_id], DropReason.OVERLOADED))
            return
        meter = model.meter
        if now_ns >= meter.next_seal_ns:
            meter.advance(now_ns)
        meter.counter += 1
        # Reference §1.2: the scheduler plans against recv + SLO - Dresp.
        queue.push(now_ns + (event.slo_ns or model.slo_ns) - self.resp_ns, event.request_id)
        self._update_candidate(model, now_ns, NEVER_BEFORE_NS)
        self._setup_active_plan(model, now_ns)

    def _on_completed(self, slot_id: int, plan_id: int, finished_at_ns: int) -> None:
        """Correct the slot's free time from a measured completion (architecture principle 4)."""
        inflight = self._inflight.get(slot_id)
        if not inflight:
            return
        remaining = [plan for plan in inflight if plan[0] != plan_id]
        if len(remaining) == len(inflight):
            return
        inflight.clear()
        inflight.extend(remaining)
        free_at = self._matcher.free_at_ns.get(slot_id)
        if free_at is None or free_at >= NEVER_NS:
            return
        corrected = finished_at_ns
        for _plan_id, exec_at, finish_at in remaining:
            corrected = max(exec_at, corrected) + (finish_at - exec_at)
        if corrected != free_at:
            self._matcher.set_free_at(slot_id, corrected)
            self._arm_slot_timer(finished_at_ns)

    def _on_slot_added(self, slot_id: int, free_at_ns: int, rank: int, slot_class: str, now_ns: int) -> None:
        if slot_id in self._matcher.free_at_ns:
            return
        cls, new_class = self._classes.add(slot_class)
        self._matcher.set_class(slot_id, cls)
        self._matcher.set_free_at(slot_id, free_at_ns)
        self._matcher.set_rank(slot_id, rank)
        self._inflight[slot_id] = deque()
        if new_class:
            self._classes_changed(now_ns)
        self._arm_slot_timer(now_ns)

    def _on_slot_removed(self, slot_id: int, now_ns: int) -> None:
        cls = self._matcher.slot_class.get(slot_id)
        if cls is None:
            return
        self._matcher.remove_slot(slot_id)
        self._inflight.pop(slot_id, None)
        if self._classes.remove(cls):
            self._classes_changed(now_ns)
        self._arm_slot_timer(now_ns)

    def _on_model_added(self, config: ModelConfig, now_ns: int) -> None:
        model = self._models[config.name] = ModelState(config, self.config, now_ns)
        fit_classes(model, self._classes, self.config)
        base = base_latency(model)
        if base is not model.latency:
            plan_with(model, base, self.config)
        if not self._mixed and differs(model) and self._per_slot:
            self._classes_changed(now_ns)

    def _classes_changed(self, now_ns: int) -> None:
        """A class came or went (issue 16): every model gets a latency for each class present and
        plans its queue on its cheapest one; if that or the mode changed, every candidate is
        re-planned (rare: a device kind joins or leaves the shard)."""
        models = list(self._models.values())
        for model in models:
            fit_classes(model, self._classes, self.config)
        mixed = self._per_slot and any(differs(model) for model in models)
        if mixed == self._mixed and all(base_latency(model) is model.latency for model in models):
            return
        for model in models:
            if model.parked:
                self._unpark(model)
        self._mixed = mixed
        if mixed != self._matcher.mixed:
            self._matcher.set_mixed(mixed)
        for model in models:
            base = base_latency(model)
            if base is not model.latency:
                plan_with(model, base, self.config)
            self._update_candidate(model, now_ns, NEVER_BEFORE_NS)
            self._setup_active_plan(model, now_ns)

    def _on_shutdown(self) -> None:
        for model in self._models.values():
            self._release(model, DropReason.SHUTDOWN)
        self._timers.cancel(self._slot_timer)

    def _on_model_removed(self, name: str) -> None:
        model = self._models.pop(name, None)
        if model is not None:
            self._release(model, DropReason.MOVED)

    def _release(self, model: ModelState, reason: DropReason) -> None:
        """Everything the model holds leaves with `reason`; its candidate and timer go."""
        held = model.queue.pop_all()
        if held:
            self._actions.append(DropRequests(model.name, held, reason))
        if model.parked:
            self._unpark(model)
        model.batch_size = 0
        model.send_at_ns = model.drop_at_ns = model.inval_at_ns = NEVER_NS
        self._timers.cancel(model)

    # ---- timers -------------------------------------------------------------------------
    def _run_due_timers(self, now_ns: int) -> None:
        timers = self._timers
        while (owner := timers.pop_due(now_ns)) is not None:
            if owner is self._slot_timer:
                self._on_slot_timer(now_ns)
            else:
                self._on_model_timer(owner, now_ns)

    def _on_model_timer(self, model: ModelState, now_ns: int) -> None:
        if model.drop_at_ns <= now_ns or model.inval_at_ns <= now_ns:
            # Reference §1.8: the drop timer (at D) and the invalidate timer (last send time)
            # both re-plan, which drops what can no longer be served.
            if model.batch_size > 0:
                self._update_candidate(model, now_ns, NEVER_BEFORE_NS)
                self._setup_active_plan(model, now_ns)
            else:
                model.drop_at_ns = model.inval_at_ns = NEVER_NS
        if model.send_at_ns <= now_ns:
            self._on_plan_timer(model, now_ns)
        self._arm_model(model)

    def _arm_model(self, model: ModelState) -> None:
        """The model's one timer, at the earliest of its send, drop and invalidate times."""
        at = model.send_at_ns
        if model.drop_at_ns < at:
            at = model.drop_at_ns
        if model.inval_at_ns < at:
            at = model.inval_at_ns
        if at != model.timer_at_ns:
            self._timers.arm(model, at)

    def _arm_slot_timer(self, now_ns: int) -> None:
        due = self._matcher.slot_timer_at_ns()
        if due is None:
            self._timers.cancel(self._slot_timer)
        else:
            self._timers.arm(self._slot_timer, max(due[0], now_ns))

    # ---- candidates (reference §1.8) ----------------------------------------------------
    def _target(self, model: ModelState, now_ns: int) -> int:
        """Reference §1.5; recomputed only when the rate estimate changes."""
        if self._drop_timeout:
            return 1
        meter = model.meter
        if now_ns >= meter.next_seal_ns:
            meter.advance(now_ns)
        if not meter.samples:
            return model.initial_target
        rate = meter.mean_rps
        if rate != model.target_rate_rps:
            model.target_rate_rps = rate
            model.target = estimate_target_batch_size(model.latency, model.budget_ns, self._data_ns, rate)
            model.target_queuing_delay_ns = int(model.target * 1e9 / rate) if rate > 0 else NEVER_NS
        return model.target

    def _check_overload(self, now_ns: int) -> None:
        """Symphony+ overload guard, re-evaluated once per rate-meter bin: demand is the
        measured rate times the least cost per request, summed over models, per slot."""
        self._overload_checked_ns = now_ns
        slots = class_speeds(list(self._models.values()), self._classes) if self._mixed else len(self._matcher)
        demand = sum(m.meter.mean_rps * m.least_cost_s for m in self._models.values()) / slots if slots else 0.0
        overloaded = demand > self.config.overload_demand_min
        if overloaded != self._overloaded:
            self._overloaded = overloaded
            beta = 1.0 if overloaded else self.config.drop_beta
            for model in self._models.values():
                model.queue.drop_beta = beta

    def _update_candidate(self, model: ModelState, now_ns: int, gpu_free_at_ns: int, grant_class: int = -1) -> None:
        if self._guard_overload and now_ns - self._overload_checked_ns >= self.config.rate_bin_ns:
            self._check_overload(now_ns)
        meter = model.meter
        if self._drop_timeout:
            target = 1
        elif now_ns < meter.next_seal_ns and meter.mean_rps == model.target_rate_rps:
            target = model.target  # the rate estimate has not changed: reuse the target
        else:
            target = self._target(model, now_ns)
        if self._mixed:
            self._update_candidate_mixed(model, now_ns, gpu_free_at_ns, target, grant_class)
            return
        queue = model.queue
        queue.update(now_ns, gpu_free_at_ns, target)
        batch_size = queue.batch_size
        model.batch_size = batch_size
        if batch_size > 0:
            deadline = queue.deadline_ns
            # The hot path: `_window`'s arithmetic inline (one method call per arrival is measurable).
            exec_ns = model.exec_ns
            data_ns = self._data_ns
            send_latency = self._ctrl_ns + data_ns * batch_size
            earliest = now_ns + send_latency
            invalid_after = deadline - exec_ns[batch_size]
            latest = invalid_after - self._jitter_ns
            if self._frontrun_mode:
                condition = deadline - self._jitter_ns - exec_ns[batch_size + 1] - data_ns
                if (self._early and condition > earliest
                        and self._dispatch_early(model, batch_size, target, earliest, now_ns)):
                    condition = earliest  # Symphony+: run now on an idle slot instead of waiting
            else:
                condition = self._condition(model, deadline, batch_size, target, earliest, latest)
            exec_at = condition if condition < latest else latest
            if exec_at < earliest:
                exec_at = earliest
            if exec_at < gpu_free_at_ns:
                exec_at = gpu_free_at_ns
            model.exec_at_ns = exec_at
            model.invalid_after_ns = invalid_after
            # Re-planning at this same instant would change nothing, so these fire no earlier
            # than the next nanosecond (a discrete clock must advance, like the reference's).
            model.drop_at_ns = deadline if deadline > now_ns else now_ns + 1
            inval_at = invalid_after - send_latency
            model.inval_at_ns = inval_at if inval_at > now_ns else now_ns + 1
        else:
            model.exec_at_ns = NEVER_NS
            model.invalid_after_ns = NEVER_BEFORE_NS
            model.drop_at_ns = model.inval_at_ns = NEVER_NS
        if queue.timeout and not queue.fcfs:
            self._actions.append(DropRequests(model.name, queue.pop_drops(), DropReason.DEADLINE))

    # ---- mixed fleets (issue 16) --------------------------------------------------------
    def _update_candidate_mixed(self, model: ModelState, now_ns: int, gpu_free_at_ns: int, target: int,
                                grant_class: int) -> None:
        """The candidate when slots differ in speed. The queue (window, drops, free lunch) runs on
        the model's cheapest class present, so a request is dropped only when the fastest slot
        could not serve it; then each class gets its own plan: the largest batch of the oldest
        requests that still meets the head deadline on that class, and its own window. The
        candidate takes the first class, cheapest first, with a slot free by its plan's start
        (else the cheapest it can run on, and waits); a grant plans on the granted slot's class."""
        queue = model.queue
        queue.update(now_ns, gpu_free_at_ns, target)
        plans: list[tuple[int, int, int, int, int]] = []
        chosen = None
        planned = 0  # classes of `model.order` planned; the rest only if the candidate must wait
        if queue.batch_size > 0:
            for cls in (model.order if grant_class < 0 else (grant_class,)):
                planned += 1
                plan = self._class_plan(model, cls, queue.batch_size, target, now_ns, gpu_free_at_ns)
                if plan is None:
                    continue
                plans.append(plan)
                if grant_class >= 0 or self._free_in_time(cls, plan[2]):
                    chosen = plan
                    break
            if chosen is None and plans:
                chosen = plans[0]
        model.plans = plans
        model.planned_classes = planned
        if chosen is None:
            model.batch_size = 0
            if grant_class >= 0:
                queue.batch_size = 0
            model.plan_class = -1
            model.exec_at_ns = NEVER_NS
            model.invalid_after_ns = NEVER_BEFORE_NS
            model.drop_at_ns = model.inval_at_ns = NEVER_NS
            if queue.deadline_ns < NEVER_NS:  # requests held that no class can serve now
                model.drop_at_ns = queue.deadline_ns if queue.deadline_ns > now_ns else now_ns + 1
        else:
            cls, batch_size, exec_at, invalid_after, send_latency = chosen
            model.plan_class = cls
            model.batch_size = batch_size
            if grant_class >= 0:
                queue.batch_size = batch_size  # what the grant takes
            model.exec_at_ns = exec_at
            model.invalid_after_ns = invalid_after
            deadline = queue.deadline_ns
            model.drop_at_ns = deadline if deadline > now_ns else now_ns + 1
            inval_at = invalid_after - send_latency
            model.inval_at_ns = inval_at if inval_at > now_ns else now_ns + 1
        if queue.timeout and not queue.fcfs:
            self._actions.append(DropRequests(model.name, queue.pop_drops(), DropReason.DEADLINE))

    def _class_plan(self, model: ModelState, cls: int, queue_batch: int, target: int, now_ns: int,
                    gpu_free_at_ns: int) -> tuple[int, int, int, int, int] | None:
        """(class, batch, exec_at, invalid_after, send latency) of the candidate on class `cls`,
        or None if even its oldest request alone would miss on it. Safe by construction: the
        batch meets the head deadline when started at max(now + send latency, gpu_free_at), and
        exec_at is at most the last start that still does (or that earliest start)."""
        latency = model.by_class[cls]
        exec_ns = latency.exec_ns
        deadline = model.queue.deadline_ns
        data_ns = self._data_ns
        if latency is model.latency:
            batch_size = queue_batch  # the queue planned on this very latency: its batch meets D
        else:
            base_ns = now_ns + self._ctrl_ns
            start = base_ns + data_ns
            if start < gpu_free_at_ns:
                start = gpu_free_at_ns
            if deadline < start + exec_ns[1]:
                return None
            high = queue_batch if queue_batch < latency.batch_size_max else latency.batch_size_max
            batch_size = largest_meeting(exec_ns, data_ns, deadline, base_ns, gpu_free_at_ns, 1, high)
        exec_at, invalid_after, send_latency = self._window(
            model, latency, cls, deadline, batch_size, target, now_ns, gpu_free_at_ns)
        return cls, batch_size, exec_at, invalid_after, send_latency

    def _window(self, model: ModelState, latency: LatencyModel, cls: int | None, deadline: int, batch_size: int,
                target: int, now_ns: int, gpu_free_at_ns: int) -> tuple[int, int, int]:
        """(exec_at, invalid_after, send latency) of a batch of `batch_size` with head deadline
        `deadline` on `latency` (class `cls`; None: any slot): the schedulable window, its start
        by the schedulable condition, clipped to [earliest send, last safe start], no earlier
        than `gpu_free_at_ns`."""
        exec_ns = latency.exec_ns
        data_ns = self._data_ns
        send_latency = self._ctrl_ns + data_ns * batch_size
        earliest = now_ns + send_latency
        invalid_after = deadline - exec_ns[batch_size]
        latest = invalid_after - self._jitter_ns
        if self._frontrun_mode:
            condition = deadline - self._jitter_ns - exec_ns[batch_size + 1] - data_ns
            if (self._early and condition > earliest
                    and self._dispatch_early(model, batch_size, target, earliest, now_ns, latency, cls)):
                condition = earliest  # Symphony+: run now on an idle slot instead of waiting
        else:
            condition = self._condition(model, deadline, batch_size, target, earliest, latest, exec_ns)
        exec_at = condition if condition < latest else latest
        if exec_at < earliest:
            exec_at = earliest
        if exec_at < gpu_free_at_ns:
            exec_at = gpu_free_at_ns
        return exec_at, invalid_after, send_latency

    def _all_plans(self, model: ModelState, now_ns: int) -> list[tuple[int, int, int, int, int]]:
        """The candidate's plan on every class it can run on: those planned with it, and the
        classes after the one it took, planned now (it waits for a slot of any of them)."""
        plans = model.plans
        rest = model.order[model.planned_classes:]
        if rest:
            queue = model.queue
            target = 1 if self._drop_timeout else model.target
            for cls in rest:
                plan = self._class_plan(model, cls, queue.batch_size, target, now_ns, NEVER_BEFORE_NS)
                if plan is not None:
                    plans.append(plan)
            model.planned_classes = len(model.order)
        return plans

    def _free_in_time(self, cls: int, exec_at_ns: int) -> bool:
        earliest = self._matcher.earliest_slot(cls)
        return earliest is not None and earliest[1] <= exec_at_ns

    def _dispatch_early(self, model: ModelState, batch_size: int, target: int, earliest: int, now_ns: int,
                        latency: LatencyModel | None = None, cls: int | None = None) -> bool:
        """Symphony+ contention-aware early dispatch (issue 3, mechanism 2 with 3).

        Deferral wins when slots are plentiful: waiting builds bigger batches at no cost. Near
        capacity every wait risks a slot not being free at the last safe moment. So, above a
        utilisation threshold, a batch whose per-request cost is already close to the target
        batch's runs now if a slot is free by its earliest start, provided enough slots stay
        free over a short horizon for the plans that fall due within it (reservation)."""
        config = self.config
        if self._utilization.value(now_ns, len(self._matcher)) < config.early_utilization_min:
            return False
        if self._overloaded:
            return False
        earliest_slot = self._matcher.earliest_slot(cls)
        if earliest_slot is None or earliest_slot[1] > earliest:
            return False
        if latency is None:
            latency = model.latency
        exec_ns = latency.exec_ns
        target = min(target, latency.batch_size_max)
        cost_ratio = exec_ns[batch_size] * target / (exec_ns[target] * batch_size)
        if cost_ratio <= 1.0 + config.early_cost_slack:
            horizon = config.reserve_horizon_ns
            return horizon <= 0 or self._slots_to_spare(model, now_ns + horizon)
        if config.lookahead and cost_ratio <= 1.0 + config.lookahead_cost_slack:
            # Waiting until the frontrun send time only pays if a slot will be free then.
            send_at = model.queue.deadline_ns - self._jitter_ns - exec_ns[batch_size + 1] - self._data_ns \
                - self._ctrl_ns - self._data_ns * batch_size
            return not self._slots_to_spare(model, send_at)
        return False

    def _slots_to_spare(self, model: ModelState, by_ns: int) -> bool:
        """Reservation: are more slots predicted free by `by_ns` than other plans due by then?"""
        free = self._matcher.count_free_by(by_ns)
        due = self._matcher.waiting_count()
        if due >= free:
            return False
        for owner in self._timers.owners_due_by(by_ns):
            if owner is not model and isinstance(owner, ModelState) and not owner.parked \
                    and owner.send_at_ns <= by_ns:
                due += 1
                if due >= free:
                    return False
        return True

    def _condition(
        self, model: ModelState, deadline: int, batch_size: int, target: int, earliest: int, latest: int,
        exec_ns: list[int] | None = None,
    ) -> int:
        schedulable = self._schedulable
        if schedulable is SchedulableCondition.FRONTRUN:
            return self._frontrun(model, deadline, batch_size, exec_ns)
        if schedulable is SchedulableCondition.IMMEDIATELY:
            return earliest
        if schedulable is SchedulableCondition.LATEST:
            return latest
        if schedulable is SchedulableCondition.TARGET_BATCH_SIZE:
            return earliest if batch_size >= target else self._frontrun(model, deadline, batch_size, exec_ns)
        # TARGET_QUEUING_DELAY: a Nexus-like duty cycle.
        return model.last_exec_at_ns + model.target_queuing_delay_ns

    def _frontrun(self, model: ModelState, deadline: int, batch_size: int, exec_ns: list[int] | None = None) -> int:
        """The last start at which a batch one request larger would still meet the deadline."""
        if exec_ns is None:
            exec_ns = model.latency.exec_ns
        return deadline - self._jitter_ns - exec_ns[batch_size + 1] - self._data_ns

    # ---- matching (reference §1.10) -----------------------------------------------------
    def _setup_active_plan(self, model: ModelState, now_ns: int) -> None:
        if model.batch_size > 0:
            send_at = model.exec_at_ns - self._ctrl_ns - self._data_ns * model.batch_size
            model.send_at_ns = send_at if send_at > now_ns else now_ns
        else:
            model.send_at_ns = NEVER_NS
        if model.parked:
            self._unpark(model)
            self._arm_slot_timer(now_ns)
        self._arm_model(model)

    def _park(self, model: ModelState, send_latency_ns: int, now_ns: int) -> None:
        model.parked = True
        if self._mixed:
            self._matcher.park_classes(model.name, [(p[0], p[3], p[4]) for p in self._all_plans(model, now_ns)])
        else:
            self._matcher.park(model.name, model.invalid_after_ns, send_latency_ns)

    def _unpark(self, model: ModelState) -> None:
        model.parked = False
        self._matcher.unpark(model.name)

    def _on_plan_timer(self, model: ModelState, now_ns: int) -> None:
        """Model-initiated matching: grant a slot free by exec_at, the most preferred one (or, with
        `slot_choice = earliest`, the earliest-free one), if there is one; otherwise wait."""
        model.send_at_ns = NEVER_NS
        if model.batch_size == 0:
            return
        send_latency = self._ctrl_ns + self._data_ns * model.batch_size
        if now_ns + send_latency > model.invalid_after_ns:
            return  # too late; the invalidate or drop timer re-plans (P2)
        cls = model.plan_class if self._mixed else None
        slot = self._slot_free_by(model.exec_at_ns, now_ns, self._pack_guard_ns, cls)
        if slot is not None:
            self._grant(model, slot, now_ns)
            return
        self._park(model, send_latency, now_ns)
        self._arm_slot_timer(now_ns)

    def _on_slot_timer(self, now_ns: int) -> None:
        """Slot-initiated matching: purge plans this slot cannot serve, grant the least-slack."""
        matcher = self._matcher
        if matcher.mixed:
            self._on_class_slot_timer(now_ns)
            return
        earliest = matcher.earliest_slot()
        if earliest is not None:
            slot_id, free_at = earliest
            while (urgent := matcher.most_urgent()) is not None and free_at > urgent[1]:
                self._unpark(self._models[urgent[0]])  # infeasible on any slot; re-planned later (P2)
            if urgent is not None:
                preferred = self._slot_free_by(free_at, now_ns)  # ties with the earliest-free slot
                self._grant(self._models[urgent[0]], slot_id if preferred is None else preferred, now_ns)
        self._arm_slot_timer(now_ns)

    def _on_class_slot_timer(self, now_ns: int) -> None:
        """Mixed fleets: the same on the due class. A plan too late for this class stops waiting
        for it only, and may still get a slot of a faster one."""
        matcher = self._matcher
        due = matcher.slot_timer_at_ns()
        if due is not None:
            slot_id = due[1]
            cls = matcher.slot_class[slot_id]
            free_at = matcher.free_at_ns[slot_id]
            while (urgent := matcher.most_urgent(cls)) is not None and free_at > urgent[1]:
                if not matcher.purge(cls, urgent[0]):
                    self._models[urgent[0]].parked = False  # infeasible on every class; re-planned later (P2)
            if urgent is not None:
                preferred = self._slot_free_by(free_at, now_ns, 0, cls)
                self._grant(self._models[urgent[0]], slot_id if preferred is None else preferred, now_ns)
        self._arm_slot_timer(now_ns)

    def _slot_free_by(self, at_ns: int, now_ns: int, guard_ns: int = 0, cls: int | None = None) -> int | None:
        """The slot a grant takes among those free by `at_ns` (issue 13: consolidation). With
        `slot_choice = preferred`, the most preferred slot that is idle, or busy but predicted
        free `guard_ns` before `at_ns` with that moment still ahead; failing that, the earliest-free."""
        if self._preferred:
            busy_by = at_ns - guard_ns if now_ns <= at_ns - guard_ns else NEVER_BEFORE_NS
            return self._matcher.preferred_free_by(at_ns, busy_by, self._inflight, cls)
        earliest = self._matcher.earliest_slot(cls)
        return earliest[0] if earliest is not None and earliest[1] <= at_ns else None

    def _grant(self, model: ModelState, slot_id: int, now_ns: int) -> None:
        """Re-plan against this slot's free time, dispatch what is feasible, re-plan the rest."""
        matcher = self._matcher
        assert slot_id in matcher.free_at_ns, "granting a slot that does not exist"
        free_at = matcher.free_at_ns[slot_id]
        assert free_at < NEVER_NS, "a reserved slot was granted again"
        if model.parked:
            self._unpark(model)
        if self._mixed:
            cls = matcher.slot_class[slot_id]
            self._update_candidate(model, now_ns, free_at, cls)
            exec_ns = model.by_class[cls].exec_ns
        else:
            self._update_candidate(model, now_ns, free_at)
            exec_ns = model.latency.exec_ns
        batch = model.queue.pop_inputs()
        if batch:
            exec_at = model.exec_at_ns
            assert exec_at >= free_at
            finish_at = exec_at + exec_ns[len(batch)]
            plan_id = next(self._plan_ids)
            self._actions.append(DispatchBatch(plan_id, slot_id, model.name, batch, exec_at, finish_at))
            self._inflight[slot_id].append((plan_id, exec_at, finish_at))
            self._utilization.add(now_ns, finish_at - exec_at, len(matcher))
            model.last_exec_at_ns = exec_at
        else:
            finish_at = max(now_ns, free_at)  # P4: an empty grant must not move free_at back
        matcher.set_free_at(slot_id, finish_at)
        self._update_candidate(model, now_ns, NEVER_BEFORE_NS)
        self._setup_active_plan(model, now_ns)
        self._arm_slot_timer(now_ns)

    # ---- introspection for the shell's metrics (read-only) ------------------------------
    def stats(self, now_ns: int | None = None) -> dict[str, ModelStats]:
        """The rate meters only advance on arrivals; sealing the bins due by `now_ns` here is what
        the next arrival would do first, so decisions do not change, but a model whose traffic
        stopped reports its rate falling (the coordinator merges splits and scales down on it)."""
        if now_ns is not None:
            for model in self._models.values():
                if now_ns >= model.meter.next_seal_ns:
                    model.meter.advance(now_ns)
        return {name: ModelStats(len(m.queue), m.target, m.meter.mean_rps) for name, m in self._models.items()}
