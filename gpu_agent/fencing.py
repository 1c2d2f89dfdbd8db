"""Slot fencing on the agent: which shard may use a slot, decided from the claims it granted.
Pure; the agent (gpu_agent/agent.py) and the control-plane simulator (load/sim/control.py) call
the same functions.

A shard claims a slot with the epoch of the assignment that gave it the slot. A claim at an
epoch older than the slot's is refused, so a shard that has not yet seen a move cannot take a
slot back from its new owner; a claim at the same or a newer epoch wins. Plans are then accepted
only from the claiming shard at its epoch or later; others are fenced (handed back)."""

from __future__ import annotations

import msgspec


class SlotOwner(msgspec.Struct, frozen=True, kw_only=True):
    shard: str = ""  # "" before any claim: without a coordinator anyone may send
    epoch: int = 0


class ClaimDecision(msgspec.Struct, frozen=True, kw_only=True):
    granted: bool
    owner: SlotOwner
    reason: str = ""


def decide_claim(owner: SlotOwner, shard: str, epoch: int) -> ClaimDecision:
    if epoch < owner.epoch:
        return ClaimDecision(granted=False, owner=owner, reason=f"epoch {epoch} is older than {owner.epoch}")
    return ClaimDecision(granted=True, owner=SlotOwner(shard=shard, epoch=epoch))


def plan_fenced(owner: SlotOwner, shard: str, epoch: int) -> bool:
    """A plan this slot must not run: from a shard other than its claimant, or an older epoch."""
    return bool(owner.shard) and (shard != owner.shard or epoch < owner.epoch)
