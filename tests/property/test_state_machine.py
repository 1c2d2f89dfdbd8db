"""A hypothesis state machine feeds random events to a policy (Symphony, Symphony+ and every
baseline) and checks, after every step, that no request leaves twice, the next wake-up is in the
future and slots are never double-booked; at teardown a shutdown must release everything still
held, so that every accepted request id has exactly one outcome: dispatched in one batch that
was not preempted, or dropped once.

Events: arrivals (known and unknown models, default and tight SLOs), time passing (wake-ups and
completions in time order), slots added and removed, dispatches the shell could not send, and,
for the policies that support moving models (the Symphony family), models added and removed."""

import heapq

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shard.core.actions import DispatchBatch, DropRequests, PreemptBatch
from shard.core.events import (
    SHUTDOWN,
    WAKE_UP,
    BatchCompleted,
    DispatchFailed,
    ModelAdded,
    ModelRemoved,
    RequestArrived,
    SlotAdded,
    SlotRemoved,
)
from shard.core.policies import POLICIES, make_policy
from shard.core.symphony import SymphonyPolicy
from tests.factories import MS, model_config

MODELS = [model_config("a", slo_ms=50), model_config("b", slo_ms=200, spec="sleep:300,2000")]
MOVABLE = {"c": model_config("c", slo_ms=80, spec="sleep:100,1000"), **{m.name: m for m in MODELS}}


class PolicyMachine(RuleBasedStateMachine):
    @initialize(policy=st.sampled_from(sorted(POLICIES)), slots=st.integers(1, 4))
    def start(self, policy: str, slots: int) -> None:
        self.policy = make_policy(policy, MODELS)
        self.now = 0
        self.wake: int | None = None
        self.next_id = 0
        self.held: set[int] = set()
        # The ledger: each accepted request id -> its one outcome ("plan <id>" or "dropped <reason>").
        self.accepted: list[int] = []
        self.outcome: dict[int, str] = {}
        self.running: dict[int, tuple[int, int, list[int]]] = {}  # plan -> (slot, finish, ids)
        self.completions: list[tuple[int, int]] = []
        self.slots = set(range(slots))
        for slot in range(slots):
            self._apply(self.policy.handle(SlotAdded(slot), 0))

    def _apply(self, step) -> None:
        for action in step.actions:
            if isinstance(action, DispatchBatch):
                assert action.slot_id in self.slots, "dispatch to a slot the policy does not have"
                for rid in action.request_ids:
                    assert rid in self.held, f"request {rid} dispatched but not held"
                    self._settle(rid, f"plan {action.plan_id}")
                self.running[action.plan_id] = (action.slot_id, action.finish_at_ns, action.request_ids)
                heapq.heappush(self.completions, (action.finish_at_ns, action.plan_id))
            elif isinstance(action, DropRequests):
                for rid in action.request_ids:
                    assert rid in self.held, f"request {rid} dropped but not held"
                    self._settle(rid, f"dropped {action.reason.value}")
            elif isinstance(action, PreemptBatch):
                _slot, _finish, ids = self.running.pop(action.plan_id)
                for rid in ids:  # back in the policy's queue: the cancelled batch is no outcome
                    del self.outcome[rid]
                    self.held.add(rid)
        self.wake = step.wake_at_ns
        assert self.wake is None or self.wake > self.now

    def _settle(self, rid: int, outcome: str) -> None:
        assert rid not in self.outcome, f"request {rid}: {outcome} after {self.outcome[rid]}"
        self.held.discard(rid)
        self.outcome[rid] = outcome

    @rule(model=st.sampled_from(["a", "b", "c", "unknown"]), gap_us=st.integers(0, 20_000),
          slo_ms=st.sampled_from([0, 5, 30]))
    def arrive(self, model: str, gap_us: int, slo_ms: int) -> None:
        self._advance_to(self.now + gap_us * 1000)
        rid = self.next_id
        self.next_id += 1
        self.held.add(rid)
        self.accepted.append(rid)
        self._apply(self.policy.handle(RequestArrived(rid, model, slo_ns=slo_ms * MS), self.now))

    @rule(gap_ms=st.integers(1, 200))
    def let_time_pass(self, gap_ms: int) -> None:
        self._advance_to(self.now + gap_ms * MS)

    @rule(slot=st.integers(0, 4))
    def toggle_slot(self, slot: int) -> None:
        if slot in self.slots:
            self.slots.discard(slot)
            for plan, (s, _f, _ids) in list(self.running.items()):
                if s == slot:  # the shell answers these requests (the slot is lost); they keep their outcome
                    del self.running[plan]
            self._apply(self.policy.handle(SlotRemoved(slot), self.now))
        else:
            self.slots.add(slot)
            self._apply(self.policy.handle(SlotAdded(slot), self.now))

    @precondition(lambda self: bool(self.running))
    @rule(pick=st.integers(0, 1_000))
    def fail_a_dispatch(self, pick: int) -> None:
        """The shell refused a plan (too large, or a slot that cannot run the model) and answered
        its requests, which keep their outcome; the policy gets its slot back at once."""
        plan = sorted(self.running)[pick % len(self.running)]
        slot, _finish, _ids = self.running.pop(plan)
        self._apply(self.policy.handle(DispatchFailed(slot, plan), self.now))

    def _moves_models(self) -> bool:
        return isinstance(self.policy, SymphonyPolicy)

    @precondition(lambda self: self._moves_models())
    @rule(name=st.sampled_from(sorted(MOVABLE)))
    def add_model(self, name: str) -> None:
        self._apply(self.policy.handle(ModelAdded(MOVABLE[name]), self.now))

    @precondition(lambda self: self._moves_models())
    @rule(name=st.sampled_from(sorted(MOVABLE)))
    def remove_model(self, name: str) -> None:
        self._apply(self.policy.handle(ModelRemoved(name), self.now))

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
    def every_request_is_held_or_has_one_outcome(self) -> None:
        if hasattr(self, "held"):
            assert not (self.held & self.outcome.keys())
            assert len(self.held) + len(self.outcome) == len(self.accepted)

    def teardown(self) -> None:
        if not hasattr(self, "policy"):
            return
        self._apply(self.policy.handle(SHUTDOWN, self.now))
        assert not self.held, f"still held after shutdown: {sorted(self.held)[:5]}"
        assert sorted(self.outcome) == self.accepted, "an accepted request has no outcome"


TestPolicyMachine = PolicyMachine.TestCase
TestPolicyMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
