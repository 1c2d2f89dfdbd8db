"""A simulated JetStream KV for the control-plane simulator (load/sim/control.py), in virtual
time, with the anomalies the live control plane must survive (issue 11 §4):

- calls that fail (a timeout: the write may or may not have been applied), slow calls;
- outages: every call fails and watches stall, as while JetStream elects a new leader after a
  server dies; entries keep ageing out meanwhile;
- stale reads: a `get` answered with the key's previous entry (a replica that lags);
- compare-and-swap that fails as if raced;
- watches that lag, die silently (until restarted), and start with a partial or empty snapshot
  (the nats-py listing behaviour measured in load/bench/kv_listing.py).

Entries carry decoded values (the simulator does not serialise). TTL buckets age entries out
without telling watches, as nats-server does for bucket-level max age.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from typing import Any

import msgspec

MS = 1_000_000
S = 1_000_000_000


class Sim:
    """Virtual time and the event heap, ordered by (at_ns, seq): same seed, same run."""

    def __init__(self, seed: int) -> None:
        self.now_ns = 0
        self.rng = random.Random(seed)
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, at_ns: int, action: Callable[[], None]) -> None:
        assert at_ns >= self.now_ns, "an event in the past"
        heapq.heappush(self._heap, (at_ns, next(self._seq), action))

    def after(self, delay_ns: int, action: Callable[[], None]) -> None:
        self.at(self.now_ns + max(0, delay_ns), action)

    def run_until(self, end_ns: int) -> None:
        while self._heap and self._heap[0][0] <= end_ns:
            at_ns, _seq, action = heapq.heappop(self._heap)
            self.now_ns = at_ns
            action()
        self.now_ns = end_ns


class Anomalies(msgspec.Struct, frozen=True, kw_only=True):
    fail_p: float = 0.0  # a call fails (half of failed writes were applied anyway)
    slow_p: float = 0.0  # a call takes up to slow_ns more
    slow_ns: int = 2 * S
    stale_read_p: float = 0.0  # a get answers with the key's previous entry
    cas_race_p: float = 0.0  # a compare-and-swap fails as if another writer got there first
    watch_lag_ns: int = 2 * MS
    watch_death_p: float = 0.0  # per delivered update: the watch stops delivering
    snapshot_partial_p: float = 0.0  # a new watch's first snapshot leaves keys out
    outages: list[tuple[int, int]] = []  # [start, end) in ns: JetStream unavailable


class Entry(msgspec.Struct, kw_only=True):
    key: str
    value: Any
    revision: int
    written_ns: int


class KVError(Exception):
    """A call that failed: the caller cannot tell whether a write was applied."""


class NotFound(Exception):
    pass


class WrongLast(Exception):
    """Create on an existing key, or update at a revision that is not the key's last."""


class Watch:
    def __init__(self, bucket: Bucket, deliver: Callable[[Entry | None, str], None]) -> None:
        self.bucket = bucket
        self.deliver = deliver  # (entry or None for a delete, key)
        self.alive = True
        self.next_ns = 0  # deliveries stay in order

    def stop(self) -> None:
        self.alive = False


class Bucket:
    def __init__(self, kv: SimKV, name: str, ttl_ns: int | None) -> None:
        self.kv = kv
        self.name = name
        self.ttl_ns = ttl_ns
        self.entries: dict[str, Entry] = {}
        self.previous: dict[str, Entry] = {}
        self.revision = 0
        self.watches: list[Watch] = []

    def _live(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None and self.ttl_ns is not None and self.kv.sim.now_ns - entry.written_ns > self.ttl_ns:
            del self.entries[key]
            return None
        return entry

    # ---- operations, applied at the server's moment ---------------------------------------------
    def get(self, key: str) -> Entry:
        entry = self._live(key)
        if entry is not None and key in self.previous and self.kv.rng.random() < self.kv.anomalies.stale_read_p:
            entry = self.previous[key]
        if entry is None:
            raise NotFound(key)
        return entry

    def put(self, key: str, value: Any) -> int:
        self.revision += 1
        old = self._live(key)
        if old is not None:
            self.previous[key] = old
        entry = Entry(key=key, value=value, revision=self.revision, written_ns=self.kv.sim.now_ns)
        self.entries[key] = entry
        self._notify(entry, key)
        return self.revision

    def create(self, key: str, value: Any) -> int:
        if self._live(key) is not None or self.kv.rng.random() < self.kv.anomalies.cas_race_p:
            raise WrongLast(key)
        return self.put(key, value)

    def update(self, key: str, value: Any, last: int) -> int:
        entry = self._live(key)
        if entry is None or entry.revision != last or self.kv.rng.random() < self.kv.anomalies.cas_race_p:
            raise WrongLast(key)
        return self.put(key, value)

    def delete(self, key: str, last: int | None = None) -> None:
        entry = self._live(key)
        if entry is None:
            return
        if last is not None and entry.revision != last:
            raise WrongLast(key)
        self.revision += 1
        del self.entries[key]
        self._notify(None, key)

    # ---- watches ----------------------------------------------------------------------------
    def watch(self, deliver: Callable[[Entry | None, str], None]) -> Watch:
        """A watch of every key: the current entries first (perhaps not all of them), then
        every change."""
        watch = Watch(self, deliver)
        self.watches.append(watch)
        current = sorted((e for k in list(self.entries) if (e := self._live(k)) is not None),
                         key=lambda e: e.revision)
        if self.kv.rng.random() < self.kv.anomalies.snapshot_partial_p:
            current = [e for e in current if self.kv.rng.random() < 0.5]
        for entry in current:
            self.kv.deliver(watch, entry, entry.key)
        return watch

    def _notify(self, entry: Entry | None, key: str) -> None:
        self.watches = [w for w in self.watches if w.alive]
        for watch in self.watches:
            self.kv.deliver(watch, entry, key)


class SimKV:
    """Three buckets like the live ones, and calls that reach them after a network delay."""

    def __init__(self, sim: Sim, anomalies: Anomalies, *, ttl_ns: int, lease_ns: int, rng: random.Random) -> None:
        self.sim = sim
        self.anomalies = anomalies
        self.rng = rng
        self.buckets = {"state": Bucket(self, "state", None), "members": Bucket(self, "members", ttl_ns),
                        "leader": Bucket(self, "leader", lease_ns)}

    def in_outage(self, at_ns: int) -> bool:
        return any(start <= at_ns < end for start, end in self.anomalies.outages)

    def outage_end(self, at_ns: int) -> int:
        return max((end for start, end in self.anomalies.outages if start <= at_ns < end), default=at_ns)

    def call(self, operation: Callable[[], Any], done: Callable[[Any, Exception | None], None]) -> None:
        """Run `operation` against the buckets after a network delay; `done(result, error)` is
        called after the answer's delay. A call that fails reports KVError."""
        a = self.anomalies
        up_ns = MS // 2 + self.rng.randrange(MS)
        if self.rng.random() < a.slow_p:
            up_ns += self.rng.randrange(a.slow_ns)
        apply_ns = self.sim.now_ns + up_ns

        def apply() -> None:
            if self.in_outage(self.sim.now_ns):
                self.sim.after(S, lambda: done(None, KVError("no stream response")))  # the client's timeout
                return
            failing = self.rng.random() < a.fail_p
            if failing and self.rng.random() < 0.5:
                self.sim.after(S, lambda: done(None, KVError("timeout")))  # not applied
                return
            try:
                result, error = operation(), None
            except (NotFound, WrongLast) as raised:
                result, error = None, raised
            if failing:  # applied, but the answer was lost
                self.sim.after(S, lambda: done(None, KVError("timeout")))
                return
            self.sim.after(MS // 2 + self.rng.randrange(MS), lambda: done(result, error))

        self.sim.at(apply_ns, apply)

    def deliver(self, watch: Watch, entry: Entry | None, key: str) -> None:
        at_ns = max(watch.next_ns, self.sim.now_ns + self.anomalies.watch_lag_ns)
        at_ns = self.outage_end(at_ns)  # a watch stalls while JetStream is unavailable
        watch.next_ns = at_ns

        def hand_over() -> None:
            if not watch.alive:
                return
            if self.rng.random() < self.anomalies.watch_death_p:
                watch.alive = False  # silently: nothing more arrives until the watch is restarted
                return
            watch.deliver(entry, key)

        self.sim.at(at_ns, hand_over)
