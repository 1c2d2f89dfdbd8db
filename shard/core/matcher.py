"""The matcher's rankings (reference §1.10): slots by free time, waiting plans by slack.

Three value-ranked maps, each a heap with lazy deletion so every operation is O(log n):
- the slot pool, slot -> free_at ascending (and, beside it, the slots in preference order, for
  `preferred_free_by`: the most preferred slot free by a time, which packs work onto the fewest
  slots so the rest stay idle for an autoscaler to release; issue 13);
- waiting plans, model -> invalid_after ascending (least slack first);
- waiting plans, model -> send latency (Dctrl + Ddata*bs), of which the maximum is used.
Ties follow the reference: among equal values the most recently upserted key ranks first.
This module only ranks; the policy decides when to grant.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections.abc import Mapping, Sized
from itertools import count

from shard.core.latency import NEVER_NS


class Matcher:
    """Slot free times and the waiting-plan rankings of one shard."""

    __slots__ = ("_by_rank", "_pool", "_rank", "_seq", "_slot_seq", "_waiting", "_by_invalid", "_by_latency",
                 "free_at_ns")

    def __init__(self) -> None:
        self.free_at_ns: dict[int, int] = {}  # slot -> predicted free time
        self._slot_seq: dict[int, int] = {}  # slot -> sequence of its latest upsert
        self._pool: list[tuple[int, int, int]] = []  # (free_at, -seq, slot)
        self._rank: dict[int, tuple[int, int]] = {}  # slot -> (rank, slot)
        self._by_rank: list[tuple[int, int]] = []  # (rank, slot) ascending: most preferred first
        self._waiting: dict[str, tuple[int, int, int]] = {}  # model -> (invalid_after, latency, seq)
        self._by_invalid: list[tuple[int, int, str]] = []  # (invalid_after, -seq, model)
        self._by_latency: list[tuple[int, int, str]] = []  # (-latency, -seq, model)
        self._seq = count(1)

    # ---- slots -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.free_at_ns)

    def set_free_at(self, slot_id: int, free_at_ns: int) -> None:
        """Upsert a slot's predicted free time (reference UpdateGpu)."""
        seq = next(self._seq)
        self.free_at_ns[slot_id] = free_at_ns
        self._slot_seq[slot_id] = seq
        heapq.heappush(self._pool, (free_at_ns, -seq, slot_id))
        if len(self._pool) > 4 * len(self.free_at_ns) + 64:
            self._compact_pool()

    def set_rank(self, slot_id: int, rank: int) -> None:
        """The slot's place in the preference order (lower is preferred; ties by slot id)."""
        old = self._rank.get(slot_id)
        if old is not None:
            self._by_rank.remove(old)
        self._rank[slot_id] = (rank, slot_id)
        insort(self._by_rank, (rank, slot_id))

    def remove_slot(self, slot_id: int) -> None:
        self.free_at_ns.pop(slot_id, None)
        self._slot_seq.pop(slot_id, None)
        old = self._rank.pop(slot_id, None)
        if old is not None:
            self._by_rank.remove(old)

    def preferred_free_by(self, at_ns: int, busy_by_ns: int | None = None,
                          in_flight: Mapping[int, Sized] | None = None) -> int | None:
        """The most preferred slot free by `at_ns`, else None. A slot with work in flight (per
        `in_flight`; without it every slot counts as busy) qualifies only if predicted free by
        `busy_by_ns` (default `at_ns`): the policy sets it a guard early (before any free time
        once that moment has passed), so that a plan queues behind a busy slot only with time to
        spare (live batches overrun their profile by a few ms on a busy host). Failing all, the
        earliest-free slot. O(1) when no slot is free by `at_ns` (the pool's head says so);
        otherwise a walk in preference order that stops at the first slot that qualifies."""
        earliest = self.earliest_slot()
        if earliest is None or earliest[1] > at_ns:
            return None
        free_at = self.free_at_ns
        for _rank, slot in self._by_rank:
            slot_free_at = free_at[slot]
            if slot_free_at > at_ns:
                continue
            if in_flight is not None and not in_flight.get(slot):
                return slot  # idle
            if slot_free_at <= (at_ns if busy_by_ns is None else busy_by_ns):
                return slot
        return earliest[0]  # none with time to spare (or a slot without a rank)

    def earliest_slot(self) -> tuple[int, int] | None:
        """Rank 0 of the pool: (slot, free_at), or None without slots."""
        pool = self._pool
        slot_seq = self._slot_seq
        while pool:
            free_at, neg_seq, slot = pool[0]
            if slot_seq.get(slot) == -neg_seq:
                return slot, free_at
            heapq.heappop(pool)
        return None

    def count_free_by(self, at_ns: int) -> int:
        """How many slots are predicted free by `at_ns` (a pruned walk of the pool heap)."""
        pool = self._pool
        slot_seq = self._slot_seq
        count_ = 0
        stack = [0] if pool else []
        while stack:
            i = stack.pop()
            free_at, neg_seq, slot = pool[i]
            if free_at > at_ns:
                continue  # the heap property: nothing below is earlier
            if slot_seq.get(slot) == -neg_seq:
                count_ += 1
            for child in (2 * i + 1, 2 * i + 2):
                if child < len(pool):
                    stack.append(child)
        return count_

    def waiting_count(self) -> int:
        return len(self._waiting)

    def _compact_pool(self) -> None:
        self._pool = [(self.free_at_ns[s], -q, s) for s, q in self._slot_seq.items()]
        heapq.heapify(self._pool)

    # ---- waiting plans -----------------------------------------------------------------
    @property
    def has_waiting(self) -> bool:
        return bool(self._waiting)

    def is_waiting(self, model: str) -> bool:
        return model in self._waiting

    def park(self, model: str, invalid_after_ns: int, latency_ns: int) -> None:
        """Insert a plan into both waiting rankings (reference OnPlanTimer, secondary path)."""
        seq = next(self._seq)
        self._waiting[model] = (invalid_after_ns, latency_ns, seq)
        heapq.heappush(self._by_invalid, (invalid_after_ns, -seq, model))
        heapq.heappush(self._by_latency, (-latency_ns, -seq, model))
        if len(self._by_invalid) > 4 * len(self._waiting) + 64:
            self._compact_waiting()

    def unpark(self, model: str) -> None:
        self._waiting.pop(model, None)

    def most_urgent(self) -> tuple[str, int] | None:
        """The waiting plan with the smallest invalid_after: (model, invalid_after)."""
        heap = self._by_invalid
        waiting = self._waiting
        while heap:
            invalid_after, neg_seq, model = heap[0]
            entry = waiting.get(model)
            if entry is not None and entry[2] == -neg_seq:
                return model, invalid_after
            heapq.heappop(heap)
        return None

    def max_waiting_latency_ns(self) -> int:
        heap = self._by_latency
        waiting = self._waiting
        while heap:
            neg_latency, neg_seq, model = heap[0]
            entry = waiting.get(model)
            if entry is not None and entry[2] == -neg_seq:
                return -neg_latency
            heapq.heappop(heap)
        return 0

    def waiting_models(self) -> list[str]:
        return list(self._waiting)

    def _compact_waiting(self) -> None:
        self._by_invalid = [(inv, -seq, m) for m, (inv, _lat, seq) in self._waiting.items()]
        self._by_latency = [(-lat, -seq, m) for m, (_inv, lat, seq) in self._waiting.items()]
        heapq.heapify(self._by_invalid)
        heapq.heapify(self._by_latency)

    def slot_timer_at_ns(self) -> tuple[int, int] | None:
        """When the single slot timer should fire, and for which slot (reference SetGpuTimer,
        with P3 fixed: one timer, always on the current rank-0 slot)."""
        if not self._waiting:
            return None
        earliest = self.earliest_slot()
        if earliest is None:
            return None
        slot, free_at = earliest
        if free_at >= NEVER_NS:
            return None
        return free_at - self.max_waiting_latency_ns(), slot
