"""Autoscaling in the control-plane simulator (load/sim/control.py, issue 13): what a seed with
the autoscaler on adds to the world. The coordinators run the live autoscaler inside their core;
this module supplies what it reads and what acts on its decision:

- a load that steps up and down during the run (`AutoscaleCase.steps`), which shards report as
  their models' rates and measured busy slot time;
- plans in flight: a shard sends plans to the slots it owns, an agent keeps each open for a
  random time and then reports it, and the shard lists a slot in `slots_held` while it owns it
  or a plan on it is unreported (as shard/service/shard.py does); agents report `plans_open`;
- an actuator that reads the published decision (KV key `autoscale`) and applies the live pure
  rule (runtime/actuator.py `actuate`): starts agents of starting slots after the cold start,
  stops an agent (it leaves: heartbeat deleted) whose slots are all released.
The draw lives here too, from its own random stream, so seeds without autoscaling run as before.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import msgspec

from coordinator.autoscale import AutoscaleConfig
from coordinator.epoch import ModelSettings, demand_slots
from load.sim.control_kv import MS, Entry, S
from runtime.actuator import actuate
from schemas.control import AUTOSCALE_KEY, AutoscaleStatus, freshest
from shard.core.config import CoreConfig

if TYPE_CHECKING:
    from load.sim.control import World
    from load.sim.control_actors import SimShard

ACTUATOR_POLL_NS = 250 * MS  # the local actuator reads the key four times a second (runtime/cluster.py)
PLAN_TICK_NS = 100 * MS  # how often a shard may send each slot it owns a plan
PLAN_TIMEOUT_NS = 2 * S  # a plan unreported this long after it should have finished is given up


class AutoscaleCase(msgspec.Struct, frozen=True, kw_only=True):
    config: AutoscaleConfig
    steps: list[tuple[int, float]]  # (from_ns, load factor on every model's rate), sorted; the last holds
    plan_ms_max: int  # a plan stays open at its agent up to this long
    plan_p: float  # per owned slot and plan tick, while the shard has load: the chance of a plan

    def factor(self, now_ns: int) -> float:
        """The load factor in force at `now_ns` (0 before the first step)."""
        current = 0.0
        for at_ns, factor in self.steps:
            if at_ns > now_ns:
                break
            current = factor
        return current

    def steady_from_ns(self) -> int:
        return self.steps[-1][0] if self.steps else 0


def draw_autoscale(seed: int, models: list[ModelSettings], rates: dict[str, float], pool: int,
                   duration_ns: int) -> AutoscaleCase | None:
    """Half the seeds run with the autoscaler: random plausible settings, and load steps scaled
    so that the demand crosses the pool's range (from near nothing to more than it holds)."""
    rng = random.Random(seed * 7919 + 3)
    if rng.random() < 0.5:
        return None
    config = AutoscaleConfig(
        rule=rng.choice(["demand", "demand", "hpa"]), target_utilization=rng.choice([0.5, 0.7, 0.9]),
        min_slots=rng.randint(1, min(2, pool)), max_slots=rng.choice([0, 0, max(1, pool - 1)]),
        hysteresis=rng.choice([0.0, 0.1, 0.2]), up_cooldown_s=rng.choice([0.0, 0.0, 2.0]),
        down_cooldown_s=rng.choice([0.0, 2.0, 10.0]), down_window_s=rng.choice([0.0, 3.0, 10.0, 20.0]),
        cold_start_s=rng.choice([0.0, 1.0, 5.0]))
    full = demand_slots(models, rates, {}, CoreConfig())
    unit = pool / full if full > 0 else 1.0  # the factor at which the demand fills the pool
    steps, t = [], 0.0
    while t < duration_ns / S - 5:
        steps.append((int(t * S), unit * rng.choice([0.0, 0.05, 0.2, 0.5, 1.0, 1.5])))
        t += rng.uniform(4, 20)
    return AutoscaleCase(config=config, steps=steps, plan_ms_max=rng.choice([20, 300, 3000]),
                         plan_p=rng.choice([0.2, 0.6]))


# ---- plans in flight ----------------------------------------------------------------------------
class PlanTraffic:
    """Plans from shards to slots and their reports back; the ground truth the checkers read:
    plans on their way to an agent (`in_transit`), open at an agent (`SimAgent.open`), unreported
    at a shard (`SimShard.in_flight`)."""

    def __init__(self, world: World, case: AutoscaleCase) -> None:
        self.world = world
        self.case = case
        self.rng = random.Random(world.case.seed * 7919 + 4)
        self.in_transit: dict[str, int] = {}
        self._next_id = 0
        self.stopped: set[str] = set()  # agents the actuator stopped and nobody started since
        self._needs: dict[tuple, float] = {}

    def need(self, rates: dict[str, float]) -> float:
        """Slot-seconds per second these models' rates need (coordinator.epoch.demand_slots),
        remembered: the rates change only at load steps, and a profile is costly to build."""
        key = tuple(sorted(rates.items()))
        if key not in self._needs:
            models = [m for m in self.world.case.models if m.name in rates]
            self._needs[key] = demand_slots(models, rates, {}, CoreConfig())
        return self._needs[key]

    def send_plans(self, shard: SimShard) -> None:
        """One plan tick of a shard: while it has load, a plan to some of the slots it owns."""
        if not any(shard.rate(m) > 0 for m in shard.holding.models):
            return
        for slot in sorted(shard.holding.slots):
            if self.rng.random() < self.case.plan_p:
                self._send(shard, slot, self.rng.randrange(1, self.case.plan_ms_max + 1) * MS)

    def _send(self, shard: SimShard, slot: str, duration_ns: int) -> None:
        world, sim = self.world, self.world.sim
        agent = world.agents[world.agent_of[slot]]
        self._next_id += 1
        plan, incarnation = self._next_id, shard.incarnation
        shard.in_flight[plan] = slot
        self.in_transit[slot] = self.in_transit.get(slot, 0) + 1

        def reported() -> None:
            shard.in_flight.pop(plan, None)

        def finish(agent_incarnation: int) -> None:
            if agent.incarnation == agent_incarnation:
                agent.open[slot] -= 1
            sim.after(MS, lambda: shard.arrive(incarnation, reported))

        def at_agent() -> None:
            self.in_transit[slot] -= 1
            if not agent.alive:
                world.checker.plan_lost(world, shard.name, slot, agent.name in self.stopped)
                return
            agent.open[slot] = agent.open.get(slot, 0) + 1
            agent_incarnation = agent.incarnation
            sim.after(duration_ns, lambda: agent.arrive(agent_incarnation, lambda: finish(agent_incarnation)))

        sim.after(MS, at_agent)
        sim.after(duration_ns + PLAN_TIMEOUT_NS, lambda: shard.arrive(incarnation, reported))


# ---- the actuator ------------------------------------------------------------------------------
class SimActuator:
    """The local actuator (runtime/cluster.py) in virtual time: reads the published decision,
    applies `actuate`, starts and stops agents. It never restarts itself: it does not crash."""

    def __init__(self, world: World, case: AutoscaleCase) -> None:
        self.world = world
        self.case = case
        self.asked_s: dict[str, float] = {}
        self.status: AutoscaleStatus | None = None
        self.reading = False
        world.sim.after(ACTUATOR_POLL_NS, self._poll)

    def _poll(self) -> None:
        world = self.world
        world.sim.after(ACTUATOR_POLL_NS, self._poll)
        if self.reading:
            return
        self.reading = True
        world.kv.call(lambda: world.kv.buckets["state"].get(AUTOSCALE_KEY), self._read)

    def _read(self, entry: Entry | None, error: Exception | None) -> None:
        self.reading = False
        if error is None and entry is not None:
            self.status = freshest(entry.value, self.status)
        world = self.world
        agents = {name: sorted(agent.slots) for name, agent in world.agents.items()}
        running = {name for name, agent in world.agents.items() if agent.alive}
        plan = actuate(self.status, agents, running, self.asked_s, world.sim.now_ns / S, self.case.config.cold_start_s)
        self.asked_s = plan.asked_s
        for name in plan.start:
            world.log(f"actuator start {name}")
            world.checker.note("actuator_start")
            world.agents[name].start()
        for name in plan.stop:
            world.log(f"actuator stop {name}")
            world.checker.note("actuator_stop")
            world.checker.agent_stopping(world, name)
            world.traffic.stopped.add(name)
            world.agents[name].stop()
        if plan.start or plan.stop:
            world.membership_check()
