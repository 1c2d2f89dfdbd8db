"""A hypothesis state machine feeds random events to a policy and checks, after every step,
that no request leaves twice, the next wake-up is in the future and slots are never
double-booked; at teardown a shutdown must release everything still held."""

import heapq

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from shard.core.actions import DispatchBatch, DropRequests, PreemptBatch
from shard.core.events import SHUTDOWN, WAKE_UP, BatchCompleted, RequestArrived, SlotAdded, SlotRemoved
from shard.core.policies import POLICIES, make_policy
from tests.factories import MS, model_config

MODELS = [model_config("a", slo_ms=50), model_config("b", slo_ms=200, spec="sleep:300,2000")]


class PolicyMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(sorted(POLICIES)), slots=st.integers(1, 4))
    def start(self, policy: str, slots: int) -> None:
        self.policy = make_policy(policy, MODELS)
        self.now = 0
        self.wake: int | None = None
        self.next_id = 0
        self.held: set[int] = set()
        self.left: set[int] = set()
        self.running: dict[int, tuple[int, int, list[int]]] = {}  # plan -> (slot, finish, ids)
        self.completions: list[tuple[int, int]] = []
        self.slots = set(range(slots))
        for slot in range(slots):
            self._apply(self.policy.handle(SlotAdded(slot), 0))

    def _apply(self, step) -> None:  # noqa: ANN001
        for action in step.actions:
            if isinstance(action, DispatchBatch):
                assert action.slot_id in self.slots, "dispatch to a slot the policy does not have"
                for rid in action.request_ids:
                    assert rid in self.held, f"request {rid} dispatched but not held"
                    self.held.discard(rid)
                self.running[action.plan_id] = (action.slot_id, action.finish_at_ns, action.request_ids)
                heapq.heappush(self.completions, (action.finish_at_ns, action.plan_id))
            elif isinstance(action, DropRequests):
                for rid in action.request_ids:
                    assert rid in self.held, f"request {rid} dropped but not held"
                    self.held.discard(rid)
                    self.left.add(rid)
            elif isinstance(action, PreemptBatch):
                _slot, _finish, ids = self.running.pop(action.plan_id)
                self.held.update(ids)
        self.wake = step.wake_at_ns
        assert self.wake is None or self.wake > self.now

    @rule(model=st.sampled_from(["a", "b", "unknown"]), gap_us=st.integers(0, 20_000),
          slo_ms=st.sampled_from([0, 5, 30]))
    def arrive(self, model: str, gap_us: int, slo_ms: int) -> None:
        self._advance_to(self.now + gap_us * 1000)
        rid = self.next_id
        self.next_id += 1
        self.held.add(rid)
        self._apply(self.policy.handle(RequestArrived(rid, model, slo_ns=slo_ms * MS), self.now))

    @rule(gap_ms=st.integers(1, 200))
    def let_time_pass(self, gap_ms: int) -> None:
        self._advance_to(self.now + gap_ms * MS)

    @rule(slot=st.integers(0, 4))
    def toggle_slot(self, slot: int) -> None:
        if slot in self.slots:
            self.slots.discard(slot)
            for plan, (s, _f, _ids) in list(self.running.items()):
                if s == slot:
                    del self.running[plan]
            self._apply(self.policy.handle(SlotRemoved(slot), self.now))
        else:
            self.slots.add(slot)
            self._apply(self.policy.handle(SlotAdded(slot), self.now))

    def _advance_to(self, until: int) -> None:
        while True:
            next_completion = self.completions[0][0] if self.completions else None
            candidates = [t for t in (self.wake, next_completion) if t is not None and t <= until]
            if not candidates:
                break
            self.now = max(self.now, min(candidates))
            if next_completion is not None and next_completion <= self.now:
                finish, plan = heapq.heappop(self.completions)
                if plan in self.running:
                    slot, _f, _ids = self.running.pop(plan)
                    self._apply(self.policy.handle(BatchCompleted(slot, plan, finish, finish), self.now))
            else:
                self._apply(self.policy.handle(WAKE_UP, self.now))
        self.now = max(self.now, until)

    @invariant()
    def no_request_is_both_held_and_gone(self) -> None:
        if hasattr(self, "held"):
            assert not (self.held & self.left)

    def teardown(self) -> None:
        if not hasattr(self, "policy"):
            return
        self._apply(self.policy.handle(SHUTDOWN, self.now))
        assert not self.held, f"still held after shutdown: {sorted(self.held)[:5]}"


TestPolicyMachine = PolicyMachine.TestCase
TestPolicyMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
