"""Checkers for the control-plane simulator (issue 11 §4). They live outside the code under test
and judge only what happened: what was written to the KV, what agents granted, what each shard's
core held at every step, against the ground truth of which processes were alive.

1. No assignment without models is written while live shards exist.
2. Epochs only go up, and no two different assignments share an epoch.
3. Within a bound after the last membership change (or KV outage), every model is owned by one
   live shard, and every slot by a live shard whose agent is alive.
4. A slot is granted to at most one shard per epoch.
5. At every step, every slot in a shard's core can run every model in it.
6. Stickiness: a model moves only when its shard left or drained, or membership changed within
   the bound (the balance rule may then act).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from coordinator.core import CoordinatorTiming
from schemas.control import Assignment
from shard.core.ownership import Holding, hosting_violations

if TYPE_CHECKING:
    from load.sim.control import ControlCase, World

S = 1_000_000_000


def convergence_bound_ns(t: CoordinatorTiming) -> int:
    """Detection (a TTL of silence, plus the last heartbeat's period, plus a read that may be
    slow or fail), a leader change (lease, then a TTL to warm its view), an epoch, and slack
    for slow and failed calls."""
    return 2 * t.heartbeat_ttl_ns + t.heartbeat_ttl_ns // 3 + t.lease_ns + t.heartbeat_ttl_ns + t.epoch_ns + 6 * S


class Checker:
    def __init__(self, case: ControlCase) -> None:
        self.case = case
        self.bound_ns = convergence_bound_ns(case.timing)
        self.violations: list[str] = []
        self.notes: dict[str, int] = {}
        self.last_epoch = 0
        self.epochs: dict[int, Assignment] = {}
        self.writes = 0
        self.moves = 0
        self.previous: Assignment | None = None
        self.changed_ns = 0  # the last membership change or outage end
        self.grants: dict[tuple[str, int], str] = {}

    def fail(self, now_ns: int, message: str) -> None:
        if len(self.violations) < 20:
            self.violations.append(f"t={now_ns / 1e9:.3f}s: {message}")

    def note(self, event: str) -> None:
        self.notes[event] = self.notes.get(event, 0) + 1

    def membership_changed(self, now_ns: int) -> None:
        self.changed_ns = now_ns

    def stable(self, now_ns: int) -> bool:
        return now_ns - self.changed_ns >= self.bound_ns

    # ---- 1, 2, 6: what was written ---------------------------------------------------------------
    def assignment_written(self, world: World, new: Assignment) -> None:
        now = world.sim.now_ns
        live = world.live_shards()
        self.writes += 1
        if not new.models and live and self.case.models:
            self.fail(now, f"epoch {new.epoch} has no models while shards {sorted(live)} are live")
        if new.epoch <= self.last_epoch:
            self.fail(now, f"epoch {new.epoch} written after epoch {self.last_epoch}")
        if new.epoch in self.epochs and self.epochs[new.epoch] != new:
            self.fail(now, f"two different assignments at epoch {new.epoch}")
        self.epochs[new.epoch] = new
        self.last_epoch = max(self.last_epoch, new.epoch)
        previous, self.previous = self.previous, new
        if previous is None:
            return
        for model, shard in sorted(new.models.items()):
            old = previous.models.get(model)
            if old is None or old == shard:
                continue
            self.moves += 1
            if old in live and self.stable(now):
                self.fail(now, f"epoch {new.epoch} moved {model} from live {old} to {shard} with membership "
                               f"unchanged for {(now - self.changed_ns) / 1e9:.1f} s")

    # ---- 3: convergence ---------------------------------------------------------------------------
    def sample(self, world: World) -> None:
        now = world.sim.now_ns
        live = world.live_shards()
        if not self.stable(now) or not live or not any(c.running() for c in world.coordinators.values()):
            return  # nothing to converge to, or nobody to converge it
        entry = world.kv.buckets["state"].entries.get("assignment")
        if entry is None:
            self.fail(now, "no assignment while shards are live")
            return
        assignment: Assignment = entry.value
        agents = world.live_agents()
        for model in self.case.models:
            owner = assignment.models.get(model.name)
            if owner not in live:
                self.fail(now, f"model {model.name} on {owner}, live shards {sorted(live)} (epoch {assignment.epoch})")
                return
        for slot, shard in sorted(assignment.slots.items()):
            if shard not in live or world.agent_of[slot] not in agents:
                self.fail(now, f"slot {slot} on {shard} (agent {world.agent_of[slot]}) is not live "
                               f"(epoch {assignment.epoch})")
                return

    # ---- 4, 5: claims and cores ----------------------------------------------------------------------
    def claim_granted(self, slot: str, epoch: int, shard: str, now_ns: int = 0) -> None:
        holder = self.grants.setdefault((slot, epoch), shard)
        if holder != shard:
            self.fail(now_ns, f"slot {slot} granted to {holder} and {shard} at epoch {epoch}")

    def shard_holding(self, world: World, shard: str, holding: Holding) -> None:
        bad = hosting_violations(holding, world.hosts)
        if bad:
            self.fail(world.sim.now_ns, f"{shard} holds slots that cannot run its models: {bad[:3]}")
