"""Safety checkers that live outside the engine (STYLE §6): they watch actions, not internals.

- every request that arrives leaves through exactly one final outcome;
- no slot runs two planned batches at once;
- no batch exceeds its model's profiled maximum (or is empty);
- a policy that promises deadlines (`deadline_margin_ns`) only dispatches batches predicted to
  finish by every member's recv + SLO - margin;
- no plan is predicted to take less than its batch's true E(b) on the slot it runs on (at noise 0):
  in a mixed fleet (issue 16) a plan predicted against a faster device than its slot's would
  meet its deadline on paper only, so this makes the deadline check mean "on the slot it runs on".
  The baselines that estimate with l(b) alone, without pre/post (Shepherd and Clockwork,
  reference §4.2; Nexus's l(b)), are held to the slot's true l(b) instead (`PLANS_FORWARD_ONLY`).
"""

from __future__ import annotations

from collections.abc import Callable

TrueExec = Callable[[int, int, int], int]  # (slot, model index, batch size) -> least ns on that slot

PLANS_FORWARD_ONLY = frozenset({"shepherd", "shepherd-fixed", "clockwork", "nexus", "nexus-warm"})


class InvariantViolation(AssertionError):
    """A scheduler broke a safety property. Carries the replay command when known."""


class Checker:
    def __init__(
        self,
        *,
        recv_ns: list[int],
        slo_ns_of_request: list[int],
        model_of_request: list[int],
        model_names: list[str],
        batch_size_max: list[int],
        deadline_margin_ns: int | None,
        true_exec_ns: TrueExec | None = None,
    ) -> None:
        self.recv_ns = recv_ns
        self.slo_ns = slo_ns_of_request
        self.model_of = model_of_request
        self.model_names = model_names
        self.batch_size_max = batch_size_max
        self.margin_ns = deadline_margin_ns
        self.true_exec_ns = true_exec_ns
        self.arrived = bytearray(len(recv_ns))
        self.finished = bytearray(len(recv_ns))
        self.planned_free_ns: dict[int, int] = {}  # slot -> when its last plan ends (known best)
        self.last_plan: dict[int, int] = {}  # slot -> its last plan
        self.plan_requests: dict[int, list[int]] = {}
        self.plan_interval: dict[int, tuple[int, int, int]] = {}  # plan -> (slot, exec, finish)

    def fail(self, message: str) -> None:
        raise InvariantViolation(message)

    def on_arrival(self, request_id: int) -> None:
        self.arrived[request_id] = 1

    def on_dispatch(
        self, now_ns: int, plan_id: int, slot_id: int, model: str, request_ids: list[int],
        exec_at_ns: int, finish_at_ns: int,
    ) -> None:
        if not request_ids:
            self.fail(f"plan {plan_id}: empty batch")
        model_index = self.model_of[request_ids[0]]
        if self.model_names[model_index] != model:
            self.fail(f"plan {plan_id}: model {model} holds a request of {self.model_names[model_index]}")
        if len(request_ids) > self.batch_size_max[model_index]:
            self.fail(f"plan {plan_id}: batch {len(request_ids)} > max {self.batch_size_max[model_index]}")
        if exec_at_ns < now_ns:
            self.fail(f"plan {plan_id}: starts at {exec_at_ns} before it was sent at {now_ns}")
        if finish_at_ns < exec_at_ns:
            self.fail(f"plan {plan_id}: finishes before it starts")
        if self.true_exec_ns is not None:
            self._check_duration(plan_id, slot_id, model_index, len(request_ids), finish_at_ns - exec_at_ns)
        if exec_at_ns < self.planned_free_ns.get(slot_id, exec_at_ns):
            self.fail(
                f"plan {plan_id}: slot {slot_id} starts at {exec_at_ns} while busy until "
                f"{self.planned_free_ns[slot_id]} (overlapping batches)"
            )
        self.planned_free_ns[slot_id] = finish_at_ns
        self.last_plan[slot_id] = plan_id
        for rid in request_ids:
            self._leave(rid, f"plan {plan_id}")
            if self.margin_ns is not None:
                deadline = self.recv_ns[rid] + self.slo_ns[rid] - self.margin_ns
                if finish_at_ns > deadline:
                    self.fail(
                        f"plan {plan_id}: request {rid} predicted to finish at {finish_at_ns}, "
                        f"after its deadline {deadline}"
                    )
        self.plan_requests[plan_id] = list(request_ids)
        self.plan_interval[plan_id] = (slot_id, exec_at_ns, finish_at_ns)

    def _check_duration(self, plan_id: int, slot_id: int, model_index: int, size: int, predicted_ns: int) -> None:
        true_ns = self.true_exec_ns(slot_id, model_index, size)
        if predicted_ns < true_ns:
            self.fail(f"plan {plan_id}: predicted to take {predicted_ns} ns for a batch of {size} of "
                      f"{self.model_names[model_index]}, but slot {slot_id} takes {true_ns} ns "
                      f"(planned with a faster device's profile)")

    def on_completed(self, slot_id: int, plan_id: int, finished_at_ns: int) -> None:
        """A measured completion replaces the prediction (slots with noise finish early or late)."""
        if self.last_plan.get(slot_id) == plan_id:
            self.planned_free_ns[slot_id] = finished_at_ns

    def on_drop(self, request_ids: list[int], reason: str) -> None:
        for rid in request_ids:
            self._leave(rid, f"drop ({reason})")

    def on_preempt(self, now_ns: int, plan_id: int) -> None:
        requests = self.plan_requests.pop(plan_id, None)
        if requests is None:
            self.fail(f"preempting unknown plan {plan_id}")
        slot_id, exec_at, _finish = self.plan_interval[plan_id]
        self.planned_free_ns[slot_id] = max(exec_at, now_ns) if exec_at > now_ns else now_ns
        for rid in requests:
            self.finished[rid] = 0  # back in the policy's queue

    def on_slot_removed(self, slot_id: int) -> None:
        self.planned_free_ns.pop(slot_id, None)

    def _leave(self, rid: int, how: str) -> None:
        if not self.arrived[rid]:
            self.fail(f"request {rid} left by {how} before it arrived")
        if self.finished[rid]:
            self.fail(f"request {rid} left twice (again by {how})")
        self.finished[rid] = 1

    def at_end(self) -> None:
        missing = [i for i, (a, f) in enumerate(zip(self.arrived, self.finished, strict=True)) if a and not f]
        if missing:
            self.fail(f"{len(missing)} requests never left the scheduler, e.g. {missing[:5]}")
