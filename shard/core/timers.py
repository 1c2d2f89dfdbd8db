"""Keyed one-shot timers for pure policies: arm, re-arm, cancel, pop what is due.

A heap with lazy deletion: re-arming pushes a new entry and the old one is skipped when it
surfaces. Ties fire in arming order, so runs are deterministic.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable
from itertools import count

from shard.core.latency import NEVER_NS

NEVER_HORIZON_NS = NEVER_NS >> 1  # anything at or past this is "never"


class TimerQueue:
    __slots__ = ("_armed", "_heap", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Hashable]] = []
        self._armed: dict[Hashable, tuple[int, int]] = {}
        self._seq = count()

    def arm(self, key: Hashable, at_ns: int) -> None:
        """Set `key` to fire at `at_ns`, replacing any earlier setting; never-times cancel."""
        if at_ns >= NEVER_HORIZON_NS:
            self._armed.pop(key, None)
            return
        current = self._armed.get(key)
        if current is not None and current[0] == at_ns:
            return
        seq = next(self._seq)
        self._armed[key] = (at_ns, seq)
        heapq.heappush(self._heap, (at_ns, seq, key))
        if len(self._heap) > 4 * len(self._armed) + 1024:
            self._compact()

    def cancel(self, key: Hashable) -> None:
        self._armed.pop(key, None)

    def armed_at(self, key: Hashable) -> int | None:
        current = self._armed.get(key)
        return None if current is None else current[0]

    def pop_due(self, now_ns: int) -> Hashable | None:
        """The next key due at or before now (and disarm it), or None."""
        heap = self._heap
        armed = self._armed
        while heap and heap[0][0] <= now_ns:
            _at, seq, key = heapq.heappop(heap)
            current = armed.get(key)
            if current is not None and current[1] == seq:
                del armed[key]
                return key
        return None

    def next_at(self) -> int | None:
        heap = self._heap
        armed = self._armed
        while heap:
            at, seq, key = heap[0]
            current = armed.get(key)
            if current is not None and current[1] == seq:
                return at
            heapq.heappop(heap)
        return None

    def _compact(self) -> None:
        self._heap = [(at, seq, key) for key, (at, seq) in self._armed.items()]
        heapq.heapify(self._heap)
