"""The discrete-event simulator: drives any policy through `handle()` in virtual time.

Events are ordered by (time, seq): arrivals (pre-generated, so they were scheduled first) come
before completions, slot changes and wake-ups at the same instant. Fake slots run a plan from
max(planned start, previous finish) for the true E(b) of the model's profile, times an optional
noise factor; without noise they finish exactly when predicted (reference §3.1). Outcomes are
judged on the slot's finish: success iff finish < recv + SLO.
"""

from __future__ import annotations

import heapq
import time
from array import array
from collections.abc import Callable

import msgspec
import numpy as np

from load.schedule import Schedule, build_schedule
from load.sim.checkers import Checker
from load.workload import LoadedWorkload
from shard.core.actions import DispatchBatch, DropReason, DropRequests, PreemptBatch
from shard.core.config import CoreConfig, ModelConfig
from shard.core.events import SHUTDOWN, WAKE_UP, BatchCompleted, RequestArrived, SlotAdded, SlotRemoved
from shard.core.latency import LatencyModel
from shard.core.policies import make_policy

PENDING, SUCCESS, TIMEOUT, DROPPED, NOREPLY = 0, 1, 2, 3, 4
OUTCOME_NAMES = ("pending", "success", "timeout", "dropped", "noreply")
NEVER = 1 << 62


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


class Batch(msgspec.Struct, frozen=True, array_like=True, gc=False):
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
    epochs: list[EpochSample] = []
    schedule: Schedule
    model_names: list[str]
    slo_ns: list[int]
    outcome: bytearray
    finish_ns: array
    batches: list[Batch]
    busy_ns_in_window: int
    cpu_s: float
    events: int


ProgressFn = Callable[[float], None]


def model_configs(loaded: LoadedWorkload, scale: float) -> list[ModelConfig]:
    return [
        ModelConfig(
            name=m.name,
            slo_ns=int(m.slo_ms * 1e6),
            profile=loaded.profiles[m.name],
            rate_hint_rps=m.bench_mean_rps * scale,
        )
        for m in loaded.workload.models
    ]


def simulate(loaded: LoadedWorkload, policy_name: str, options: SimOptions = SimOptions()) -> SimRun:
    workload = loaded.workload
    slots = options.slots or workload.slots
    schedule = build_schedule(workload, scale=options.scale, seed=options.seed)
    models = model_configs(loaded, options.scale)
    if options.shards <= 1:
        policy = make_policy(policy_name, models, options.core)
        return run_policy(policy, models, slots, schedule, options)
    from load.sim.partition import partitioned_shards

    shards = partitioned_shards(models, slots, options, policy_name)
    return run_shards(shards, models, schedule, options)


class ShardSpec(msgspec.Struct):
    """One scheduler instance in a simulation: its policy, the models it owns, its first slots."""

    policy: object
    models: list[str]
    slots: list[int]


def run_policy(policy, models: list[ModelConfig], slots: int, schedule: Schedule, options: SimOptions) -> SimRun:  # noqa: ANN001
    """The whole workload on one policy that owns every slot."""
    return run_shards([ShardSpec(policy, [m.name for m in models], list(range(slots)))], models, schedule, options)


def run_shards(shards: list[ShardSpec], models: list[ModelConfig], schedule: Schedule, options: SimOptions) -> SimRun:  # noqa: C901, PLR0912, PLR0915 - the hot loop stays in one piece on purpose
    """Drive every shard's policy on one clock: arrivals go to the model's shard, completions to
    the shard that dispatched the plan, wake-ups to the shard that asked; at each epoch
    (`options.epoch_s`) slots move between shards as the coordinator's algorithm says."""
    names = [m.name for m in models]
    policy = shards[0].policy
    policies = [s.policy for s in shards]
    shard_of = {name: k for k, spec in enumerate(shards) for name in spec.models}
    shard_of_model = [shard_of[name] for name in names]
    owner = {slot: k for k, spec in enumerate(shards) for slot in spec.slots}
    slots = len(owner)
    index_of = {name: i for i, name in enumerate(names)}
    slo_ns = [m.slo_ns for m in models]
    true_exec = [LatencyModel(m.profile, monotone=False) for m in models]
    times = schedule.times_ns.tolist()
    model_of = schedule.model_index.tolist()
    n = len(times)
    outcome = bytearray(n)
    finish_ns = array("q", bytes(8 * n))
    window_start, window_end = schedule.window_ns
    noise_rng = np.random.default_rng([schedule.seed, 7_777])
    noise = options.noise

    checker = None
    if options.checks:
        checker = Checker(
            recv_ns=times,
            slo_ns_of_request=[slo_ns[m] for m in model_of],
            model_of_request=model_of,
            model_names=names,
            batch_size_max=[lat.batch_size_max for lat in true_exec],
            deadline_margin_ns=policy.deadline_margin_ns,
        )

    slot_free = {}  # slot -> actual free time
    plans: dict[int, tuple[int, list[int], int, int, int]] = {}  # plan -> (slot, ids, start, finish, batch#)
    batches: list[Batch] = []
    completions: list[tuple[int, int, int, int]] = []  # (finish, seq, slot, plan)
    seq = 0
    busy = 0
    events = 0
    slot_changes = sorted(
        (int(e.at_s * 1e9), e.kind, e.slot_id) for e in options.slot_events
    )
    change_at = 0
    handles = [p.handle for p in policies]
    wake_of: list[int | None] = [None] * len(shards)
    wakes: list[tuple[int, int]] = []  # (at, shard), lazily superseded
    epoch_ns = int(options.epoch_s * 1e9)
    next_epoch = epoch_ns if epoch_ns else NEVER
    epochs: list[EpochSample] = []

    def apply(actions: list, now: int, k: int) -> None:
        nonlocal seq, busy
        for action in actions:
            kind = action.__class__
            if kind is DispatchBatch:
                rids = action.request_ids
                if checker is not None:
                    checker.on_dispatch(
                        now, (k, action.plan_id), action.slot_id, action.model, rids,
                        action.exec_at_ns, action.finish_at_ns,
                    )
                slot_id = action.slot_id
                m = index_of[action.model]
                size = len(rids)
                start = action.exec_at_ns
                free = slot_free[slot_id]
                if free > start:
                    start = free
                duration = true_exec[m].exec(size)
                if noise:
                    duration = int(duration * max(0.2, 1.0 + noise * noise_rng.standard_normal()))
                finish = start + duration
                slot_free[slot_id] = finish
                deadline_base = slo_ns[m]
                for rid in rids:
                    outcome[rid] = SUCCESS if finish < times[rid] + deadline_base else TIMEOUT
                    finish_ns[rid] = finish
                lo = start if start > window_start else window_start
                hi = finish if finish < window_end else window_end
                if hi > lo:
                    busy += hi - lo
                plans[(k, action.plan_id)] = (slot_id, rids, start, finish, len(batches))
                batches.append(Batch(slot_id, m, size, start, finish))
                seq += 1
                heapq.heappush(completions, (finish, seq, slot_id, (k, action.plan_id)))
            elif kind is DropRequests:
                code = NOREPLY if action.reason is DropReason.SHUTDOWN else DROPPED
                if checker is not None:
                    checker.on_drop(action.request_ids, action.reason.value)
                for rid in action.request_ids:
                    outcome[rid] = code
            elif kind is PreemptBatch:
                if checker is not None:
                    checker.on_preempt(now, (k, action.plan_id))
                _cancel_plan((k, action.plan_id), now, requeue=True)
            else:
                raise TypeError(f"unknown action {action!r}")

    def _cancel_plan(plan_id: tuple[int, int], now: int, requeue: bool) -> None:
        nonlocal busy
        slot_id, rids, start, finish, batch_index = plans.pop(plan_id)
        for rid in rids:
            outcome[rid] = PENDING if requeue else DROPPED
        lo, hi = max(now, start, window_start), min(finish, window_end)
        if hi > lo:
            busy -= hi - lo  # the part that will not run
        cut = max(now, start)
        if slot_id in slot_free and slot_free[slot_id] == finish:
            slot_free[slot_id] = cut
        old = batches[batch_index]
        batches[batch_index] = Batch(old.slot_id, old.model_index, old.size, old.start_ns, cut)

    def settle(k: int, step, now: int) -> None:  # noqa: ANN001
        if step.actions:
            apply(step.actions, now, k)
        wake = step.wake_at_ns
        assert wake is None or wake > now, f"{policies[k].name} asked to be woken at {wake} <= now {now}"
        if wake != wake_of[k]:
            wake_of[k] = wake
            if wake is not None:
                heapq.heappush(wakes, (wake, k))

    def rebalance(now: int) -> None:
        """An epoch: the coordinator's algorithm re-allocates slots from measured rates."""
        from load.sim.partition import epoch_assignment

        window = sum(min(b.finish_ns, now) - max(b.start_ns, now - epoch_ns) for b in batches[-50_000:]
                     if b.finish_ns > now - epoch_ns and b.start_ns < now)
        moves, desired = epoch_assignment(policies, shards, owner, models, quotas=options.quotas)
        epochs.append(EpochSample(now, desired, window / epoch_ns, len(owner)))
        for slot_id, k in moves.items():
            old = owner[slot_id]
            settle(old, handles[old](SlotRemoved(slot_id), now), now)
            owner[slot_id] = k
            settle(k, handles[k](SlotAdded(slot_id, slot_free.get(slot_id, now)), now), now)

    started = time.process_time()
    now = 0
    for slot_id, k in sorted(owner.items()):
        slot_free[slot_id] = 0
        settle(k, handles[k](SlotAdded(slot_id), 0), 0)

    i = 0
    single = len(shards) == 1
    handle = handles[0]
    while True:
        ta = times[i] if i < n else NEVER
        tc = completions[0][0] if completions else NEVER
        ts = slot_changes[change_at][0] if change_at < len(slot_changes) else NEVER
        while wakes and wakes[0][0] != wake_of[wakes[0][1]]:
            heapq.heappop(wakes)  # superseded
        tw = wakes[0][0] if wakes else NEVER
        if next_epoch <= ta and next_epoch <= tc and next_epoch <= ts and next_epoch <= tw:
            if ta == tc == ts == tw == NEVER:
                break
            now = next_epoch
            next_epoch += epoch_ns
            rebalance(now)
            continue
        if ta <= tc and ta <= ts and ta <= tw:
            if ta == NEVER:
                break
            now = ta
            if checker is not None:
                checker.on_arrival(i)
            if single:
                step = handle(RequestArrived(i, names[model_of[i]]), now)
                k = 0
            else:
                k = shard_of_model[model_of[i]]
                step = handles[k](RequestArrived(i, names[model_of[i]]), now)
            i += 1
        elif tc <= ts and tc <= tw:
            now, _s, slot_id, key = heapq.heappop(completions)
            plan = plans.pop(key, None)
            if plan is None:
                continue  # preempted or lost with its slot
            if checker is not None:
                checker.on_completed(slot_id, key, now)
            k = key[0]
            step = handles[k](BatchCompleted(slot_id, key[1], plan[2], plan[3]), now)
        elif ts <= tw:
            now, kind, slot_id = slot_changes[change_at]
            change_at += 1
            if kind == "remove":
                if slot_id not in slot_free:
                    continue
                for key in [p for p, v in plans.items() if v[0] == slot_id and v[3] > now]:
                    _cancel_plan(key, now, requeue=False)  # its requests are lost with it
                del slot_free[slot_id]
                if checker is not None:
                    checker.on_slot_removed(slot_id)
                k = owner[slot_id]
                step = handles[k](SlotRemoved(slot_id), now)
            else:
                if slot_id in slot_free:
                    continue
                slot_free[slot_id] = now
                k = owner[slot_id]
                step = handles[k](SlotAdded(slot_id), now)
        else:
            now, k = heapq.heappop(wakes)
            wake_of[k] = None
            step = handles[k](WAKE_UP, now)
        events += 1
        if single:
            if step.actions:
                apply(step.actions, now, 0)
            wake = step.wake_at_ns
            assert wake is None or wake > now, f"{policy.name} asked to be woken at {wake} <= now {now}"
            if wake != wake_of[0]:
                wake_of[0] = wake
                if wake is not None:
                    heapq.heappush(wakes, (wake, 0))
        else:
            settle(k, step, now)

    for k, handle_k in enumerate(handles):
        apply(handle_k(SHUTDOWN, now).actions, now, k)
    cpu_s = time.process_time() - started
    if checker is not None:
        checker.at_end()
    for rid in range(n):
        if outcome[rid] == PENDING:
            outcome[rid] = NOREPLY
    return SimRun(
        policy=policy.name,
        slots=slots,
        shards=len(shards),
        epochs=epochs,
        schedule=schedule,
        model_names=names,
        slo_ns=slo_ns,
        outcome=outcome,
        finish_ns=finish_ns,
        batches=batches,
        busy_ns_in_window=busy,
        cpu_s=cpu_s,
        events=events,
    )
