"""The slots' life under the autoscaler: which are active, starting, draining or released, from
its decision and what the heartbeats show. Pure: explicit time, no I/O; the coordinator's core
runs it once per epoch, after `coordinator.autoscale.decide`.

Idea. A slot the autoscaler takes away must lose nothing, so it is not stopped, it is drained:
1. It leaves the assignment. Its shard then sends SlotRemoved to its core (no new plans) and
   keeps its plans in flight until their reports arrive: the handover contract of a slot moving
   between shards (shard/core/ownership.py), with nobody on the receiving end.
2. It is *quiet* once no live shard's heartbeat lists it in `slots_held` (owned, or a plan on it
   not reported yet) and the newest assignment does not give it to anyone. Every plan any shard
   sent it has then been reported; the agent publishes a plan's report before its replies.
3. It is *released* once an agent heartbeat seen after the moment it was quiet shows no open
   plan on it (`plans_open`: received and not yet answered). Heartbeats come through one watch
   in stream order, so that heartbeat was written after the shards' quiet ones. Only then may
   an actuator stop its agent: every request it took has been answered, once.
A slot the autoscaler asks for is *starting* until a heartbeat of its agent arrives that was seen
after the request; then it serves. A slot that shows up unasked (no actuator, or a new leader)
serves at once: without an autoscaler every slot serves, as before. A draining slot asked for
again serves again at once (it is warm; `choose_slots` takes those first).
"""

from __future__ import annotations

import msgspec

from coordinator.autoscale import AutoscaleSignal, choose_slots, hold_order
from schemas.control import AgentHeartbeat, Assignment, AutoscaleStatus, ShardHeartbeat

NOT_QUIET = -1  # a draining slot some shard still holds


class SlotSeen(msgspec.Struct, frozen=True, kw_only=True):
    """A slot in a live agent's heartbeat."""

    plans_open: int
    seen_ns: int  # when this coordinator received that heartbeat


class SlotPhases(msgspec.Struct, frozen=True, kw_only=True):
    starting: dict[str, int] = {}  # slot -> when it was asked for
    draining: dict[str, int] = {}  # slot -> when it was first seen quiet (NOT_QUIET: not yet)
    released: frozenset[str] = frozenset()  # drained and empty, its agent still running

    def serving(self, present: dict[str, SlotSeen]) -> set[str]:
        """Slots whose agents run and that are in none of the other phases: the active slots."""
        return {s for s in present if s not in self.starting and s not in self.draining and s not in self.released}


def present_slots(agents: dict[str, AgentHeartbeat], seen_ns: dict[str, int]) -> dict[str, SlotSeen]:
    """Every slot of a live agent; `seen_ns`: agent id -> when its latest heartbeat arrived."""
    return {slot.slot_id: SlotSeen(plans_open=slot.plans_open, seen_ns=seen_ns[agent])
            for agent, beat in agents.items() for slot in beat.slots}


def held_slots(shards: dict[str, ShardHeartbeat], assignment: Assignment | None) -> frozenset[str]:
    """Slots some live shard holds or may still claim: a draining slot is quiet outside these."""
    held = {slot for beat in shards.values() for slot in beat.slots_held}
    return frozenset(held | set(assignment.slots if assignment is not None else ()))


def observe(phases: SlotPhases, present: dict[str, SlotSeen], held: frozenset[str], now_ns: int) -> SlotPhases:
    """Move slots along as the heartbeats allow: starting -> serving, draining -> quiet ->
    released; a released or draining slot whose agent is gone is idle (a draining agent that
    died is the lost-slot path's: its shards answer what it held).

    Released is re-checked every epoch: a released slot that some shard holds or that has a plan
    open is draining again. A new leader takes its predecessor's phases from the newest status
    it saw, which may be older than what the cluster did since (seed 1277 of `symphony sim
    control`: a leader whose watch lagged published a slot as released while two shards sent it
    plans, and the actuator stopped its agent with 17 plans open)."""
    starting = {s: at for s, at in phases.starting.items() if s not in present or present[s].seen_ns <= at}
    released = {s for s in phases.released if s in present and s not in held and present[s].plans_open == 0}
    draining: dict[str, int] = {s: NOT_QUIET for s in phases.released if s in present and s not in released}
    for slot, quiet_ns in phases.draining.items():
        if slot not in present:
            continue
        if slot in held:
            draining[slot] = NOT_QUIET
        elif quiet_ns == NOT_QUIET:
            draining[slot] = now_ns
        elif present[slot].seen_ns > quiet_ns and present[slot].plans_open == 0:
            released.add(slot)
        else:
            draining[slot] = quiet_ns
    return SlotPhases(starting=starting, draining=draining, released=frozenset(released))


def apply_target(phases: SlotPhases, ranked: list[str], target: int, present: dict[str, SlotSeen],
                 now_ns: int, hosts: dict[str, frozenset[str]] | None = None, cap: int = 0) -> SlotPhases:
    """Start or drain slots so that `target` serve or start (coordinator.autoscale.choose_slots
    picks which: the least preferred drain first, draining slots come back first). `hosts`
    (slot -> the models it runs): a slot that is the last serving host of a model is not
    drained though the target says so (`keep_hosts`), as long as no more than `cap` slots
    (`max_slots`, a budget the operator set; 0: none) serve or start."""
    serving = phases.serving(present)
    start, drain = choose_slots(ranked, target, serving, set(phases.starting), set(phases.draining))
    kept = keep_hosts(drain, serving, hosts or {})
    if cap:
        room = cap - (len(serving) + len(phases.starting) + len(start) - len(kept))
        kept += [slot for slot in drain if slot not in kept][:max(0, -room)]
    drain = [slot for slot in drain if slot in kept]
    starting, draining, released = dict(phases.starting), dict(phases.draining), set(phases.released)
    for slot in start:
        if slot in draining:
            del draining[slot]  # warm: it serves again at once
        else:
            starting[slot] = now_ns
            released.discard(slot)
    for slot in drain:
        if slot in starting:
            del starting[slot]
            if slot in present:
                # Its agent runs: drained like any other, since a leader that published it as
                # starting is not the only one that may have given it work (seed 1596: a new
                # leader inherited "starting" for slots its predecessor had put to work since).
                draining[slot] = NOT_QUIET
        else:
            draining[slot] = NOT_QUIET
    return SlotPhases(starting=starting, draining=draining, released=frozenset(released))


def keep_hosts(drain: list[str], serving: set[str], hosts: dict[str, frozenset[str]]) -> list[str]:
    """The slots of `drain` that may go: not one whose leaving leaves a model it runs with no
    serving host. With mixed slots the least preferred slot may be the only one that runs some
    model; draining it would strand that model's requests, and its shard (with models and no
    slots) would stop reporting their rate, so the need would fall and the pool flap (seed 1116
    of `symphony sim control`: up and down every two epochs for 150 s)."""
    models = {model for slot in serving for model in hosts.get(slot, ())}
    # The models some remaining slot runs, kept up to date as slots stay: asking every remaining
    # slot about every model of every drained one took seconds for a cold epoch at 2,000 slots.
    covered = {model for slot in serving - set(drain) for model in hosts.get(slot, ())}
    allowed = []
    for slot in drain:
        stranded = [m for m in hosts.get(slot, ()) if m not in covered]
        if slot in serving and stranded and set(stranded) <= models:
            covered.update(hosts.get(slot, ()))  # it stays: the last host of `stranded`
        else:
            allowed.append(slot)
    return allowed


def autoscale_signal(shards: dict[str, ShardHeartbeat], demand: float, phases: SlotPhases,
                     present: dict[str, SlotSeen], total: int, now_ns: int,
                     weighted: tuple[list[str], dict[str, float]] | None = None) -> AutoscaleSignal:
    """One epoch's measurements for `decide`: the demand, the shards' measured busy slot time,
    and their bad fraction weighted by each shard's request rate. `weighted`: a mixed fleet's
    slots in preference order and the reference slots each is worth."""
    rates = {shard: sum(load.rate_rps for load in beat.models.values()) for shard, beat in shards.items()}
    answered = sum(rates.values())
    bad = sum(beat.bad_rate * rates[shard] for shard, beat in shards.items()) / answered if answered > 0 else 0.0
    busy = sum(beat.busy_slots for beat in shards.values())
    serving = phases.serving(present)
    weights: tuple[float, ...] = ()
    if weighted is not None and weighted[1]:
        ranked, worth = weighted
        order = hold_order(ranked, serving, set(phases.starting), set(phases.draining))
        weights = tuple(worth.get(slot, 1.0) for slot in order)
    return AutoscaleSignal(now_s=now_ns / 1e9, demand_slots=demand, busy_slots=busy, bad_rate=min(1.0, bad),
                           active=len(serving), starting=len(phases.starting), total=total, weights=weights)


def phases_from_status(status: AutoscaleStatus, now_ns: int) -> SlotPhases:
    """A new leader takes over the phases its predecessor published, so that it neither puts a
    draining slot back to work nor forgets one that an actuator is starting. A slot published as
    released is taken over as draining: released is a claim about the heartbeats its author had
    seen, and the newest status this leader saw may be older than what happened since (seed 1596:
    a leader whose watch lagged inherited three released slots that had been started again and
    held plans; the actuator stopped their agent). The new leader sees them quiet itself."""
    return SlotPhases(starting=dict.fromkeys(status.starting, now_ns),
                      draining=dict.fromkeys([*status.draining, *status.released], NOT_QUIET))


def autoscale_status(phases: SlotPhases, ranked: list[str], present: dict[str, SlotSeen],
                     **fields: object) -> AutoscaleStatus:
    """The decision as published: every slot in exactly one list, each in preference order."""
    serving = phases.serving(present)
    lists = {
        "active": [s for s in ranked if s in serving],
        "starting": [s for s in ranked if s in phases.starting],
        "draining": [s for s in ranked if s in phases.draining],
        "released": [s for s in ranked if s in phases.released],
    }
    named = {s for names in lists.values() for s in names}
    return AutoscaleStatus(**lists, idle=[s for s in ranked if s not in named], **fields)
