"""The local cluster as the autoscaler's actuator (`symphony up --autoscale`): which agent
processes to start and stop for the decision the leading coordinator published (KV key
`autoscale`, schemas.control.AutoscaleStatus). Pure: the running processes and the time are
inputs; runtime/cluster.py reads the key, starts and stops the processes.

The rules keep the drain contract (coordinator/slots.py): an agent is stopped only when every
slot it hosts is `released` (drained, empty, nothing in flight), never while one is active,
starting or draining, and never on a decision it has not seen (no decision yet: nothing moves).
An agent whose slot is `starting` is started once the slot has been asked for `cold_start_s`
(emulating a real machine's cold start; the coordinator counts the slot as coming meanwhile).
A slot may be asked for again while its agent is stopping: it stays `starting` until its agent's
heartbeat shows up, so the agent is simply started again.
"""

from __future__ import annotations

import msgspec

from schemas.control import AutoscaleStatus


class ActuatorPlan(msgspec.Struct, frozen=True, kw_only=True):
    start: list[str] = []  # agent ids to start now
    stop: list[str] = []  # agent ids to stop now
    asked_s: dict[str, float] = {}  # agent id -> when one of its slots was first seen starting


def actuate(status: AutoscaleStatus | None, agents: dict[str, list[str]], running: set[str],
            asked_s: dict[str, float], now_s: float, cold_start_s: float) -> ActuatorPlan:
    """`agents`: agent id -> its slots (the cluster config); `running`: agents whose process
    runs; `asked_s`: the previous plan's. Returns what to start and stop now."""
    if status is None:
        return ActuatorPlan(asked_s=asked_s)
    starting, released = set(status.starting), set(status.released)
    start: list[str] = []
    stop: list[str] = []
    asked: dict[str, float] = {}
    for agent, slots in sorted(agents.items()):
        if agent in running:
            if slots and all(slot in released for slot in slots):
                stop.append(agent)
        elif any(slot in starting for slot in slots):
            since = asked_s.get(agent, now_s)
            if now_s - since >= cold_start_s:
                start.append(agent)
            else:
                asked[agent] = since
    return ActuatorPlan(start=start, stop=stop, asked_s=asked)
