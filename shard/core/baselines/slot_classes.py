"""Per slot-class latency tables for the baselines in a mixed fleet (issue 16).

A baseline keeps its single table built from `ModelConfig.profile` (the slowest over every class)
and, in `per_slot` mode, one more table per class the model has a profile for. Decisions about a
specific slot look its class up here; "" or a class without an entry falls back to the slowest
table, which is always safe. In `slowest` mode no class tables exist, so every slot plans with the
slowest profile exactly as before the mixed-fleet work (byte-identical batches).
"""

from __future__ import annotations

from shard.core.config import ModelConfig, SlotProfiles
from shard.core.latency import LatencyModel


def class_latencies(model: ModelConfig, slot_profiles: SlotProfiles, *, monotone: bool) -> dict[str, LatencyModel]:
    """The model's table per slot class; empty in `slowest` mode. `monotone` is the baseline's
    own choice for its main table (Shepherd and Nexus plan on the raw profile, as the reference)."""
    if slot_profiles is SlotProfiles.SLOWEST:
        return {}
    return {name: LatencyModel(profile, monotone=monotone) for name, profile in model.class_profiles.items()}


def slot_class_of(slot_class: str, slot_profiles: SlotProfiles) -> str:
    """The class a policy files a slot under: its own in `per_slot` mode, "" (the slowest) in
    `slowest` mode, so slots of every class are interchangeable there as in a homogeneous fleet."""
    return slot_class if slot_profiles is SlotProfiles.PER_SLOT else ""
