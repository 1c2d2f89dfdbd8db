"""The matcher's rankings (reference §1.10): slots by free time, waiting plans by slack.

Three value-ranked maps, each a heap with lazy deletion so every operation is O(log n):
- the slot pool, slot -> free_at ascending (and, beside it, the slots in preference order, for
  `preferred_free_by`: the most preferred slot free by a time, which packs work onto the fewest
  slots so the rest stay idle for an autoscaler to release; issue 13);
- waiting plans, model -> invalid_after ascending (least slack first);
- waiting plans, model -> send latency (Dctrl + Ddata*bs), of which the maximum is used.
Ties follow the reference: among equal values the most recently upserted key ranks first.
This module only ranks; the policy decides when to grant.

Mixed fleets (issue 16): once `enable_classes` is called every slot has a class, and the pool and
the waiting rankings are also kept per class: a plan waits with one (invalid_after, latency) per
class it can run on, so a plan too late for a slow slot still waits for a fast one. Without it
the structures and sequence numbers are exactly the single-class ones.
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
                 "_class_pools", "_class_waiting", "_class_by_invalid", "_class_by_latency", "free_at_ns", "mixed",
                 "slot_class")

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
        self.slot_class: dict[int, int] = {}  # slot -> class index (issue 16)
        self.mixed = False
        self._class_pools: dict[int, list[tuple[int, int, int]]] = {}
        self._class_waiting: dict[int, dict[str, tuple[int, int, int]]] = {}
        self._class_by_invalid: dict[int, list[tuple[int, int, str]]] = {}
        self._class_by_latency: dict[int, list[tuple[int, int, str]]] = {}

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
        if self.mixed:
            cls = self.slot_class[slot_id]
            pool = self._class_pools.setdefault(cls, [])
            heapq.heappush(pool, (free_at_ns, -seq, slot_id))
            if len(pool) > 4 * len(self.free_at_ns) + 64:
                self._class_pools[cls] = self._class_pool(cls)

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
        self.slot_class.pop(slot_id, None)
        old = self._rank.pop(slot_id, None)
        if old is not None:
            self._by_rank.remove(old)

    def preferred_free_by(self, at_ns: int, busy_by_ns: int | None = None,
                          in_flight: Mapping[int, Sized] | None = None, cls: int | None = None) -> int | None:
        """The most preferred slot free by `at_ns`, else None. A slot with work in flight (per
        `in_flight`; without it every slot counts as busy) qualifies only if predicted free by
        `busy_by_ns` (default `at_ns`): the policy sets it a guard early (before any free time
        once that moment has passed), so that a plan queues behind a busy slot only with time to
        spare (live batches overrun their profile by a few ms on a busy host). Failing all, the
        earliest-free slot. O(1) when no slot is free by `at_ns` (the pool's head says so);
        otherwise a walk in preference order that stops at the first slot that qualifies.
        With `cls`, only slots of that class (mixed fleets)."""
        earliest = self.earliest_slot(cls)
        if earliest is None or earliest[1] > at_ns:
            return None
        free_at = self.free_at_ns
        busy_by = at_ns if busy_by_ns is None else busy_by_ns
        ranked = self._by_rank if cls is None else self._ranked_of(cls)
        for _rank, slot in ranked:
            slot_free_at = free_at[slot]
            if slot_free_at > at_ns:
                continue
            if in_flight is not None and not in_flight.get(slot):
                return slot  # idle
            if slot_free_at <= busy_by:
                return slot
        return earliest[0]  # none with time to spare (or a slot without a rank)

    def _ranked_of(self, cls: int) -> list[tuple[int, int]]:
        """The slots of class `cls` in preference order (mixed fleets only; a short list)."""
        slot_class = self.slot_class
        return [entry for entry in self._by_rank if slot_class[entry[1]] == cls]

    def earliest_slot(self, cls: int | None = None) -> tuple[int, int] | None:
        """Rank 0 of the pool (of class `cls`'s pool): (slot, free_at), or None without slots."""
        pool = self._pool if cls is None else self._class_pools.get(cls, [])
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

    def _class_pool(self, cls: int) -> list[tuple[int, int, int]]:
        pool = [(self.free_at_ns[s], -q, s) for s, q in self._slot_seq.items() if self.slot_class[s] == cls]
        heapq.heapify(pool)
        return pool

    # ---- slot classes (issue 16) -------------------------------------------------------
    def set_class(self, slot_id: int, cls: int) -> None:
        """The slot's class; call before its first `set_free_at`."""
        self.slot_class[slot_id] = cls

    def set_mixed(self, mixed: bool) -> None:
        """Keep per-class pools and rankings (or stop). Nothing may be waiting: the policy
        re-plans every model when the mode changes."""
        assert not self._waiting, "switching the class mode with plans waiting"
        self.mixed = mixed
        self._class_waiting.clear()
        self._class_by_invalid.clear()
        self._class_by_latency.clear()
        self._class_pools = {c: self._class_pool(c) for c in set(self.slot_class.values())} if mixed else {}

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
        if self._waiting.pop(model, None) is not None and self.mixed:
            for waiting in self._class_waiting.values():
                waiting.pop(model, None)

    def park_classes(self, model: str, plans: list[tuple[int, int, int]]) -> None:
        """Mixed fleets: a plan waits in the rankings of each class it can run on, with that
        class's (invalid_after, send latency): `plans` is [(class, invalid_after, latency)]."""
        seq = next(self._seq)
        self._waiting[model] = (min(p[1] for p in plans), max(p[2] for p in plans), seq)
        for cls, invalid_after_ns, latency_ns in plans:
            self._class_waiting.setdefault(cls, {})[model] = (invalid_after_ns, latency_ns, seq)
            by_invalid = self._class_by_invalid.setdefault(cls, [])
            heapq.heappush(by_invalid, (invalid_after_ns, -seq, model))
            heapq.heappush(self._class_by_latency.setdefault(cls, []), (-latency_ns, -seq, model))
            if len(by_invalid) > 4 * len(self._waiting) + 64:
                self._compact_class_waiting(cls)

    def purge(self, cls: int, model: str) -> bool:
        """The plan can no longer run on class `cls`; True while it still waits for another."""
        self._class_waiting.get(cls, {}).pop(model, None)
        if any(model in waiting for waiting in self._class_waiting.values()):
            return True
        self._waiting.pop(model, None)
        return False

    def _compact_class_waiting(self, cls: int) -> None:
        waiting = self._class_waiting[cls]
        self._class_by_invalid[cls] = [(inv, -seq, m) for m, (inv, _lat, seq) in waiting.items()]
        self._class_by_latency[cls] = [(-lat, -seq, m) for m, (_inv, lat, seq) in waiting.items()]
        heapq.heapify(self._class_by_invalid[cls])
        heapq.heapify(self._class_by_latency[cls])

    def most_urgent(self, cls: int | None = None) -> tuple[str, int] | None:
        """The waiting plan with the smallest invalid_after (on class `cls`): (model, invalid_after)."""
        heap = self._by_invalid if cls is None else self._class_by_invalid.get(cls, [])
        waiting = self._waiting if cls is None else self._class_waiting.get(cls, {})
        while heap:
            invalid_after, neg_seq, model = heap[0]
            entry = waiting.get(model)
            if entry is not None and entry[2] == -neg_seq:
                return model, invalid_after
            heapq.heappop(heap)
        return None

    def max_waiting_latency_ns(self, cls: int | None = None) -> int:
        heap = self._by_latency if cls is None else self._class_by_latency.get(cls, [])
        waiting = self._waiting if cls is None else self._class_waiting.get(cls, {})
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
        if self.mixed:
            return self._class_slot_timer_at_ns()
        earliest = self.earliest_slot()
        if earliest is None:
            return None
        slot, free_at = earliest
        if free_at >= NEVER_NS:
            return None
        return free_at - self.max_waiting_latency_ns(), slot

    def _class_slot_timer_at_ns(self) -> tuple[int, int] | None:
        """Mixed fleets: the earliest over classes with waiting plans of (the class's earliest
        free slot - its longest waiting send latency); still one timer per shard."""
        best: tuple[int, int] | None = None
        for cls, waiting in self._class_waiting.items():
            if not waiting:
                continue
            earliest = self.earliest_slot(cls)
            if earliest is None or earliest[1] >= NEVER_NS:
                continue
            at = earliest[1] - self.max_waiting_latency_ns(cls)
            if best is None or at < best[0]:
                best = (at, earliest[0])
        return best
