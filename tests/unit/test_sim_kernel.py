"""The simulator's event loop (load.sim.kernel): one heap, and a fixed order at one instant."""

import numpy as np

from load.schedule import Schedule
from load.sim.kernel import run_shards
from load.sim.outcomes import NOREPLY, SUCCESS
from load.sim.records import ShardSpec, SimEvent, SimOptions
from shard.core.actions import DispatchBatch, DropReason, DropRequests, Step
from shard.core.events import RequestArrived, Shutdown, SlotAdded, WakeUp
from tests.factories import model_config

S = 1_000_000_000


class ScriptedPolicy:
    """Asks to be woken at `wake_ns` when it gets its first slot; dispatches request 0 when it
    arrives (and then wants no wake-up), drops request 1 at shutdown. Logs every event."""

    deadline_margin_ns = None

    def __init__(self, name: str, wake_ns: int, log: list[tuple[str, str, int]]) -> None:
        self.name = name
        self.first_wake_ns = wake_ns
        self.wake_ns: int | None = None
        self.log = log

    def handle(self, event: object, now_ns: int) -> Step:
        self.log.append((self.name, type(event).__name__, now_ns))
        actions: list = []
        if isinstance(event, SlotAdded) and self.wake_ns is None and now_ns == 0:
            self.wake_ns = self.first_wake_ns
        elif isinstance(event, RequestArrived) and event.request_id == 0:
            actions = [DispatchBatch(plan_id=0, slot_id=0, model="m", request_ids=[0], exec_at_ns=now_ns,
                                     finish_at_ns=now_ns + S)]
            self.wake_ns = None
        elif isinstance(event, WakeUp):
            self.wake_ns = None
        elif isinstance(event, Shutdown) and self.name == "a":
            actions = [DropRequests(model="m", request_ids=[1], reason=DropReason.SHUTDOWN)]
        return Step(actions=actions, wake_at_ns=self.wake_ns)


def test_events_at_one_instant_go_arrival_completion_slot_change_wake_up() -> None:
    model = model_config("m", slo_ms=10_000, spec="sleep:1000000,0")  # E(1) = 1 s
    schedule = Schedule(times_ns=np.array([S, 2 * S], dtype=np.int64), model_index=np.array([0, 0], dtype=np.int32),
                        bench_start_ns=[0], bench_end_ns=[3 * S], seed=1, scale=1.0)
    log: list[tuple[str, str, int]] = []
    shards = [ShardSpec(ScriptedPolicy("a", 3 * S // 2, log), ["m"], [0, 1]),  # its 1.5 s wake-up is superseded
              ShardSpec(ScriptedPolicy("b", 2 * S, log), [], [2])]
    options = SimOptions(checks=True, slot_events=[SimEvent(at_s=2.0, kind="remove", slot_id=1)])
    run = run_shards(shards, [model], schedule, options)
    assert log == [
        ("a", "SlotAdded", 0), ("a", "SlotAdded", 0), ("b", "SlotAdded", 0),
        ("a", "RequestArrived", S),
        ("a", "RequestArrived", 2 * S), ("a", "BatchCompleted", 2 * S), ("a", "SlotRemoved", 2 * S),
        ("b", "WakeUp", 2 * S),
        ("a", "Shutdown", 2 * S), ("b", "Shutdown", 2 * S),
    ]
    assert list(run.outcome) == [SUCCESS, NOREPLY]
    assert run.events == 5
