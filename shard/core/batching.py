"""The incremental batch policy of one model (reference §1.6). Pure; owns no timers.

Idea: keep the largest group of newest requests that can still run as ONE batch (the suffix
window), batch `min(target, window)`, drop older requests that would not fit a batch of that
size (WindowDrop), then grow the batch past the target while the head deadline still holds
("free lunch"). Requests only move forward: suffix -> prefix -> timeout, never back, so this
state is incremental and must not be recomputed from scratch (reference §7.3).

Departure from the reference: P7 is fixed (see `update`), because a live service must answer
every request even when no further request arrives.

Entries are `(deadline_ns, request_id)` tuples, so tuple order is the reference's
`(deadline ASC, global_id ASC)` order (§1.3).
"""

from __future__ import annotations

from collections import deque

from shard.core.config import DropPolicy
from shard.core.latency import NEVER_NS, LatencyModel

Entry = tuple[int, int]  # (deadline_ns, request_id)


class BatchQueue:
    """prefix / suffix / timeout sets and the current batch size and batch deadline."""

    __slots__ = (
        "batch_size",
        "count",
        "ctrl_ns",
        "data_ns",
        "deadline_ns",
        "drop",
        "drop_beta",
        "exec_ns",
        "fcfs",
        "last_update_ns",
        "latency",
        "prefix",
        "suffix",
        "timeout",
    )

    def __init__(
        self, latency: LatencyModel, drop: DropPolicy, ctrl_ns: int, data_ns: int, drop_beta: float = 1.0
    ) -> None:
        self.latency = latency
        self.drop_beta = drop_beta
        self.exec_ns = latency.exec_ns
        self.drop = drop
        self.fcfs = drop is DropPolicy.WINDOW_FCFS
        self.ctrl_ns = ctrl_ns
        self.data_ns = data_ns
        self.prefix: deque[Entry] = deque()
        self.suffix: deque[Entry] = deque()
        self.timeout: deque[Entry] = deque()
        self.batch_size = 0
        self.deadline_ns = NEVER_NS
        self.last_update_ns = -(1 << 62)
        self.count = 0  # requests held in all three sets

    def __len__(self) -> int:
        return self.count

    def push(self, deadline_ns: int, request_id: int) -> None:
        """Add an arrival. Arrivals usually come in deadline order; a request with a shorter
        per-request SLO is placed in order, in prefix if it is older than prefix's newest, so
        the invariant "every prefix deadline <= every suffix deadline" holds."""
        entry = (deadline_ns, request_id)
        self.count += 1
        suffix = self.suffix
        if (not suffix or suffix[-1] < entry) and (not self.prefix or self.prefix[-1] < entry):
            suffix.append(entry)
            return
        target = self.prefix if self.prefix and entry < self.prefix[-1] else suffix
        _insert_sorted(target, entry)

    def update(self, now_ns: int, gpu_free_at_ns: int, target: int) -> None:
        """Reference §1.6 UpdateInternal with `target` already made effective by the caller."""
        assert now_ns >= self.last_update_ns, "time went backwards"
        self.last_update_ns = now_ns
        exec_ns = self.exec_ns
        batch_size_max = self.latency.batch_size_max
        base_ns = now_ns + self.ctrl_ns
        data_ns = self.data_ns
        suffix, prefix = self.suffix, self.prefix
        held_late = len(self.timeout) if self.fcfs else 0

        # (1) shrink the window: suffix = the newest requests that fit in ONE batch together.
        # finish(b) = max(now + Dctrl + Ddata*b, gpu_free_at) + E(b); beyond the profiled
        # range E is 3600 s, so such a window never fits.
        size = held_late + len(suffix)
        while size > held_late:
            start = base_ns + data_ns * size
            if start < gpu_free_at_ns:
                start = gpu_free_at_ns
            if size <= batch_size_max and suffix[0][0] >= start + exec_ns[size]:
                break
            prefix.append(suffix.popleft())
            size -= 1

        # (2) batch size.
        batch_size = target if target < size else size
        self.batch_size = batch_size
        if batch_size == 0:
            self.deadline_ns = NEVER_NS
            if prefix and not self.fcfs:
                # P7 fixed: the reference skips the prefix here, stranding requests until the next
                # arrival. An emptied suffix means every prefix request misses even alone, so
                # drop them now; without more arrivals nothing else would ever answer them.
                start = base_ns + data_ns
                if start < gpu_free_at_ns:
                    start = gpu_free_at_ns
                finish = start + exec_ns[1]
                timeout = self.timeout
                while prefix and prefix[0][0] < finish:
                    timeout.append(prefix.popleft())
            return

        # (3) older requests must be feasible at this batch size, else they time out.
        # Symphony+ (drop_beta < 1) tests a smaller batch, beta x that size, and then serves the
        # surviving older requests with a batch small enough for them (below).
        if prefix:
            drop_size = batch_size
            if self.drop_beta < 1.0:
                drop_size = max(1, -int(-self.drop_beta * batch_size // 1))
            start = base_ns + data_ns * drop_size
            if start < gpu_free_at_ns:
                start = gpu_free_at_ns
            finish = start + (exec_ns[drop_size] if drop_size <= batch_size_max else exec_ns[-1])
            timeout = self.timeout
            while prefix and prefix[0][0] < finish:
                timeout.append(prefix.popleft())
            if prefix and drop_size < batch_size:
                batch_size = self._largest_meeting(prefix[0][0], base_ns, gpu_free_at_ns, drop_size, batch_size)
                self.batch_size = batch_size

        # (4) the batch deadline is the earliest deadline the batch will contain.
        if batch_size <= held_late:
            self.deadline_ns = NEVER_NS  # FCFS with only late requests: no free lunch
            return
        deadline = prefix[0][0] if prefix else suffix[0][0]
        self.deadline_ns = deadline

        # (5) free lunch: grow while the head deadline still holds. finish(b) is monotone in b
        # (monotone profile), so a binary search finds what the reference's linear scan finds.
        high = len(prefix) + size  # every request held
        if high > batch_size_max:
            high = batch_size_max
        if batch_size >= high:
            return
        low = batch_size + 1
        start = base_ns + data_ns * low
        if start < gpu_free_at_ns:
            start = gpu_free_at_ns
        if deadline < start + exec_ns[low]:
            return
        self.batch_size = self._largest_meeting(deadline, base_ns, gpu_free_at_ns, low, high)

    def _largest_meeting(self, deadline: int, base_ns: int, gpu_free_at_ns: int, low: int, high: int) -> int:
        """Largest b in [low, high] whose batch finishes by `deadline`; `low` is known to."""
        return largest_meeting(self.exec_ns, self.data_ns, deadline, base_ns, gpu_free_at_ns, low, high)

    def pop_inputs(self) -> list[int]:
        """Take up to batch_size requests: timeout (FCFS only), then prefix, then suffix."""
        wanted = self.batch_size
        taken: list[int] = []
        sources = (self.timeout, self.prefix, self.suffix) if self.fcfs else (self.prefix, self.suffix)
        for source in sources:
            while source and len(taken) < wanted:
                taken.append(source.popleft()[1])
        self.count -= len(taken)
        self.batch_size = 0
        self.deadline_ns = NEVER_NS
        return taken

    def count_drops(self) -> int:
        return 0 if self.fcfs else len(self.timeout)

    def pop_drops(self) -> list[int]:
        """The requests to drop now; FCFS keeps late requests to run them first instead."""
        if self.fcfs or not self.timeout:
            return []
        dropped = [entry[1] for entry in self.timeout]
        self.timeout.clear()
        self.count -= len(dropped)
        return dropped

    def pop_all(self) -> list[int]:
        """Every request held, in order (shutdown)."""
        held = [e[1] for e in self.timeout] + [e[1] for e in self.prefix] + [e[1] for e in self.suffix]
        self.timeout.clear()
        self.prefix.clear()
        self.suffix.clear()
        self.count = 0
        self.batch_size = 0
        self.deadline_ns = NEVER_NS
        return held

    def head_deadline_ns(self) -> int:
        """The earliest deadline held outside timeout, or NEVER_NS."""
        if self.prefix:
            return self.prefix[0][0]
        if self.suffix:
            return self.suffix[0][0]
        return NEVER_NS


def largest_meeting(exec_ns: list[int], data_ns: int, deadline: int, base_ns: int, gpu_free_at_ns: int,
                    low: int, high: int) -> int:
    """Largest b in [low, high] whose batch, sent from `base_ns` (+ Ddata per request) and started
    no earlier than `gpu_free_at_ns`, finishes by `deadline` with E = `exec_ns`; `low` is known to.
    finish(b) is monotone in b for a monotone profile, so a binary search suffices."""
    while low < high:
        mid = (low + high + 1) >> 1
        start = base_ns + data_ns * mid
        if start < gpu_free_at_ns:
            start = gpu_free_at_ns
        if deadline >= start + exec_ns[mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _insert_sorted(queue: deque[Entry], entry: Entry) -> None:
    index = len(queue)
    while index > 0 and queue[index - 1] > entry:
        index -= 1
    queue.insert(index, entry)
