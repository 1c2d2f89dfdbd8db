"""One-shot timers for pure policies: arm, re-arm, cancel, pop what is due.

Each timer owner (a model's state, the slot timer) carries its own `timer_at_ns`/`timer_seq`,
so re-arming is one heap push and no dict lookup; a superseded heap entry is skipped when it
surfaces (lazy deletion). Ties fire in arming order, so runs are deterministic.
"""

from __future__ import annotations

import heapq

from shard.core.latency import NEVER_NS

NEVER_HORIZON_NS = NEVER_NS >> 1  # anything at or past this is "never"


class TimerOwner:
    """Mixin state for anything that owns one timer."""

    __slots__ = ("timer_at_ns", "timer_seq")

    def __init__(self) -> None:
        self.timer_at_ns = NEVER_NS
        self.timer_seq = -1


class TimerQueue:
    __slots__ = ("_armed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, TimerOwner]] = []
        self._seq = 0
        self._armed = 0  # owners with a live entry; the rest of the heap is superseded entries

    def arm(self, owner: TimerOwner, at_ns: int) -> None:
        """Set the owner's timer to `at_ns`, replacing any earlier setting; never-times cancel."""
        if at_ns >= NEVER_HORIZON_NS:
            self.cancel(owner)
            return
        if owner.timer_seq >= 0:
            if owner.timer_at_ns == at_ns:
                return
        else:
            self._armed += 1
        self._seq += 1
        owner.timer_at_ns = at_ns
        owner.timer_seq = self._seq
        heap = self._heap
        heapq.heappush(heap, (at_ns, self._seq, owner))
        if len(heap) > 8 * self._armed + 256:
            # Mostly superseded entries: rebuild, so pushes and pops stay O(log live timers).
            self._heap = [entry for entry in heap if entry[2].timer_seq == entry[1]]
            heapq.heapify(self._heap)

    def cancel(self, owner: TimerOwner) -> None:
        if owner.timer_seq >= 0:
            self._armed -= 1
        owner.timer_seq = -1
        owner.timer_at_ns = NEVER_NS

    def pop_due(self, now_ns: int) -> TimerOwner | None:
        """The next owner due at or before now (its timer disarmed), or None."""
        heap = self._heap
        while heap and heap[0][0] <= now_ns:
            _at, seq, owner = heapq.heappop(heap)
            if owner.timer_seq == seq:
                owner.timer_seq = -1
                owner.timer_at_ns = NEVER_NS
                self._armed -= 1
                return owner
        return None

    def next_at(self) -> int | None:
        heap = self._heap
        while heap:
            at, seq, owner = heap[0]
            if owner.timer_seq == seq:
                return at
            heapq.heappop(heap)
        return None

    def owners_due_by(self, at_ns: int):  # noqa: ANN201 - a generator of TimerOwner
        """Owners whose timer is at or before `at_ns`, in no particular order (pruned walk)."""
        heap = self._heap
        stack = [0] if heap else []
        while stack:
            i = stack.pop()
            at, seq, owner = heap[i]
            if at > at_ns:
                continue
            if owner.timer_seq == seq:
                yield owner
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(heap):
                    stack.append(child)

    def has_due(self, now_ns: int) -> bool:
        heap = self._heap
        return bool(heap) and heap[0][0] <= now_ns
