"""The outcome ledger: one final outcome per request, and when its batch finished.

A dispatched request is judged on its batch's finish on the fake slot: success iff
finish < recv + SLO, else timeout. A preempted batch's requests go back to pending (the policy
holds them again); a batch lost with its slot drops them. Whatever is still pending when the run
ends got no reply. The ledger records; it does not decide (the policy did) and it does not check
(load.sim.checkers does).
"""

from __future__ import annotations

from array import array

PENDING, SUCCESS, TIMEOUT, DROPPED, NOREPLY = 0, 1, 2, 3, 4
OUTCOME_NAMES = ("pending", "success", "timeout", "dropped", "noreply")


class OutcomeLedger:
    """Outcome codes and finish times by request id, for requests received at `recv_ns`."""

    def __init__(self, recv_ns: list[int]) -> None:
        self.recv_ns = recv_ns
        self.outcome = bytearray(len(recv_ns))
        self.finish_ns = array("q", bytes(8 * len(recv_ns)))

    def judge(self, request_ids: list[int], slo_ns: int, finish_ns: int) -> None:
        """The batch holding `request_ids` finishes at `finish_ns`: success iff before recv + SLO."""
        outcome, recv_ns, finished = self.outcome, self.recv_ns, self.finish_ns
        for rid in request_ids:
            outcome[rid] = SUCCESS if finish_ns < recv_ns[rid] + slo_ns else TIMEOUT
            finished[rid] = finish_ns

    def mark(self, request_ids: list[int], code: int) -> None:
        """Set one code for every request (a drop, a requeue, a batch lost with its slot)."""
        outcome = self.outcome
        for rid in request_ids:
            outcome[rid] = code

    def close(self) -> None:
        """The run is over: a request still pending never got a reply."""
        outcome = self.outcome
        for rid in range(len(outcome)):
            if outcome[rid] == PENDING:
                outcome[rid] = NOREPLY
