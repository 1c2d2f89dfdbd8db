"""The lost-slot watch: a slot whose completion report is overdue by the grace period is declared
lost, on evidence only, and the requests of its overdue plans are answered `503` once (or, for
plans the shard cannot know the fate of, not at all); then the core is told the slot is gone.
Younger plans on the slot wait until they are overdue themselves (or reported).

The rules are docs/reliability.md §2 rules 3 and 4; the decisions (which slots are overdue, when
silence is long enough, whether a plan's requests are answered or `unknown`, what counts as a
stall of this process) are the pure functions at the top. `SlotWatch` only pings, waits and sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import nats
import structlog

from runtime.clock import MonotonicClock
from schemas.status import Status
from shard.service.metrics import ShardMetrics
from shard.service.publish import InFlight, reply_error

log = structlog.get_logger("shard")

TICK_NS = 100_000_000
AGENT_SILENCE_NS = 3_000_000_000  # an agent that neither answers nor disappears is declared lost after this
RECONNECT_SETTLE_NS = 3_000_000_000  # after this shard reconnects, agents get this long to reconnect too


# ---- decisions ----------------------------------------------------------------------------
def stalled_ns(now_ns: int, last_ns: int) -> int:
    """How long this process itself was paused or starved since the last tick (0 if it was not):
    then reports may be waiting in its socket, and no agent is to blame."""
    stalled = now_ns - last_ns - TICK_NS
    return stalled if stalled > 2 * TICK_NS else 0


def overdue_slots(flights: Iterable[InFlight], now_ns: int, grace_ns: int) -> list[str]:
    """Slots with a plan whose report is overdue by the grace period, in order."""
    return sorted({f.slot_id for f in flights if now_ns > f.finish_ns + grace_ns})


def silent_too_long(flights: Iterable[InFlight], slot_id: str, now_ns: int, grace_ns: int) -> bool:
    """The slot's oldest plan is overdue by the grace and the agent's silence allowance."""
    oldest = min((f.finish_ns for f in flights if f.slot_id == slot_id), default=now_ns)
    return now_ns > oldest + grace_ns + AGENT_SILENCE_NS


def fate_unknown(flight: InFlight, reconnects: int, reconnected_at_ns: int) -> bool:
    """Rule 4: a plan sent before this shard's connection broke, or while everyone was
    re-subscribing after it: the agent's report may have died with the server or found no
    subscriber yet while its replies got through, so whether the client was answered cannot be
    known. Silence (the client's timeout) is the only answer that can never be a second one."""
    return flight.connection != reconnects or flight.sent_ns < reconnected_at_ns + RECONNECT_SETTLE_NS


def take_overdue_plans(inflight: dict[int, InFlight], slot_id: str, now_ns: int, grace_ns: int) -> list[InFlight]:
    """Take the slot's overdue plans out of the in-flight table, oldest first. Only these may be
    answered: the agent withholds a plan's replies from its `lost_after_unix_ns` (finish plus
    grace) on, so an overdue plan can get no reply from it. A younger plan on the same slot stays:
    an agent that is alive (it answered the ping) still answers it in time, and if it does not,
    the plan becomes overdue and is judged on its own."""
    plans = [plan for plan, flight in inflight.items()
             if flight.slot_id == slot_id and now_ns > flight.finish_ns + grace_ns]
    return [inflight.pop(plan) for plan in plans]


# ---- the watch ----------------------------------------------------------------------------
class SlotWatch:
    """Every tick, checks the slots with overdue plans and declares lost those it has evidence
    for. Shares the shell's in-flight table; `lost` is the set of slots declared lost."""

    def __init__(self, clock: MonotonicClock, *, shard_id: str, prefix: str, grace_ns: int,
                 inflight: dict[int, InFlight], metrics: ShardMetrics, agent_of_slot: dict[str, str],
                 slot_lost: Callable[[str, int], Awaitable[None]]) -> None:
        self.lost: set[str] = set()
        self._clock = clock
        self._shard_id = shard_id
        self._prefix = prefix
        self.grace_ns = grace_ns
        self._inflight = inflight
        self._metrics = metrics
        self._agent_of_slot = agent_of_slot
        self._slot_lost = slot_lost  # tells the core the slot is gone
        self._nc: nats.NATS | None = None
        self._task: asyncio.Task | None = None
        self._reconnects = 0
        self._reconnected_at_ns = 0

    def start(self, nc: nats.NATS) -> None:
        self._nc = nc
        self._task = asyncio.create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def forget(self, slot_id: str) -> None:
        """The slot was claimed again: it is no longer lost."""
        self.lost.discard(slot_id)

    async def _run(self) -> None:
        last = self._clock.now_ns()
        while True:
            await asyncio.sleep(TICK_NS / 1e9)
            now = self._clock.now_ns()
            stalled = stalled_ns(now, last)
            if stalled:
                # Extend every plan's grace by the stall instead of declaring loss.
                for flight in self._inflight.values():
                    flight.finish_ns += stalled
                log.warning("shard_stalled", shard=self._shard_id, seconds=round(stalled / 1e9, 2))
            else:
                if self._nc.stats["reconnects"] != self._reconnects:
                    self._reconnects = self._nc.stats["reconnects"]
                    self._reconnected_at_ns = now
                for slot_id in overdue_slots(self._inflight.values(), now, self.grace_ns):
                    if await self._slot_is_lost(slot_id):
                        await self._lose_slot(slot_id, self._clock.now_ns())
            last = self._clock.now_ns()  # the checks' own waits are not a stall

    async def _slot_is_lost(self, slot_id: str) -> bool:
        """Declare a slot lost (and answer its requests 503) only on evidence that its agent will
        not answer them: a second reply must never follow. The server must be responsive (else
        reports may be stuck in it); then the agent either has no subscriber left (its connection
        is gone), or it answers a ping (ordered after any report it sent, so a plan still in
        flight has no report and its replies will be withheld), or it has been silent past
        AGENT_SILENCE_NS (paused or cut off; its late replies are withheld by then)."""
        nc = self._nc
        try:  # a round trip through the server to this shard's own status endpoint (nats-py's
            # flush() must not time out: a late PONG then breaks its read loop)
            await nc.request(f"{self._prefix}.shard.{self._shard_id}.status", b"", timeout=0.5)
        except nats.errors.Error:
            return False
        agent_id = self._agent_of_slot.get(slot_id)
        if agent_id is not None:
            try:
                await nc.request(f"{self._prefix}.agent.{agent_id}.info", b"", timeout=0.3)
            except nats.errors.NoRespondersError:
                # No subscriber: the agent's connection is gone, unless this shard has only just
                # reconnected itself (the agent may be a moment behind): then wait as for silence.
                if self._clock.now_ns() - self._reconnected_at_ns < RECONNECT_SETTLE_NS:
                    return silent_too_long(self._inflight.values(), slot_id, self._clock.now_ns(), self.grace_ns)
            except nats.errors.TimeoutError:
                return silent_too_long(self._inflight.values(), slot_id, self._clock.now_ns(), self.grace_ns)
        await asyncio.sleep(0.02)  # let reports that arrived before the answer be handled
        return slot_id in overdue_slots(self._inflight.values(), self._clock.now_ns(), self.grace_ns)

    async def _lose_slot(self, slot_id: str, now: int) -> None:
        """Answer the slot's overdue plans; the first time, also tell the core the slot is gone."""
        first = slot_id not in self.lost
        self.lost.add(slot_id)
        answered = unknown = 0
        reconnects = self._nc.stats["reconnects"]
        for flight in take_overdue_plans(self._inflight, slot_id, now, self.grace_ns):
            if fate_unknown(flight, reconnects, self._reconnected_at_ns):
                unknown += len(flight.requests)
                self._metrics.count(flight.model, "unknown", len(flight.requests))
                continue
            answered += len(flight.requests)
            self._metrics.count_failed(flight.model, "lost", len(flight.requests),
                                       sum(r.queue_us for r in flight.requests) * 1000
                                       + len(flight.requests) * (self._clock.now_ns() - flight.sent_ns),
                                       self._clock.wall_ns())
            for request in flight.requests:
                await reply_error(self._nc, request.reply, Status.UNAVAILABLE, f"slot {slot_id} was lost",
                                  request.client_request_id)
        log.warning("slot_lost", shard=self._shard_id, slot=slot_id, requests=answered, unknown=unknown,
                    again=not first)
        if first:
            self._metrics.slots_lost += 1
            await self._slot_lost(slot_id, now)
