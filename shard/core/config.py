"""Validated configuration handed to the core: latency constants and policy switches.

Reference §1.2 and §6 give the defaults. Everything is in integer nanoseconds; workloads and
wire messages are converted at the edge.
"""

from __future__ import annotations

import enum
from typing import Annotated, Protocol

import msgspec
from msgspec import Meta

from schemas.profile import ModelProfile

NonNegativeNs = Annotated[int, Meta(ge=0)]
PositiveNs = Annotated[int, Meta(gt=0)]


class SchedulableCondition(enum.Enum):
    """When a candidate becomes due (reference §1.8)."""

    IMMEDIATELY = "immediately"
    TARGET_BATCH_SIZE = "target_batch_size"
    TARGET_QUEUING_DELAY = "target_queuing_delay"
    FRONTRUN = "frontrun"
    LATEST = "latest"


class DropPolicy(enum.Enum):
    """What the batch policy drops (reference §1.6)."""

    DROP_TIMEOUT = "drop_timeout"
    WINDOW_DROP = "window_drop"
    WINDOW_FCFS = "window_fcfs"


class SlotChoice(enum.Enum):
    """Which free slot a grant takes (issue 13)."""

    PREFERRED = "preferred"  # the most preferred slot free in time: work packs onto the fewest slots
    EARLIEST = "earliest"  # the earliest-free slot (reference §1.10): among idle ones, the longest idle


class SlotProfiles(enum.Enum):
    """Which profile plans a slot in a mixed fleet (issue 16)."""

    PER_SLOT = "per_slot"  # each slot with its own class's profile
    SLOWEST = "slowest"  # every slot with the slowest profile (reference §2.2, MergeProfileBySlowest)


class CoreConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Latency constants and switches shared by the Symphony-family policies."""

    ctrl_ns: NonNegativeNs = 100_000  # Dctrl: plan message to the agent
    data_ns: NonNegativeNs = 50_000  # Ddata: per request input transfer
    resp_ns: NonNegativeNs = 2_000_000  # Dresp: result back to the client; deadline margin
    timer_jitter_ns: NonNegativeNs = 100_000  # J: only in latest/frontrun (reference §1.2)
    rate_bin_ns: PositiveNs = 50_000_000  # RPS meter bin (reference §1.4)
    rate_window_bins: Annotated[int, Meta(ge=1)] = 100
    schedulable: SchedulableCondition = SchedulableCondition.FRONTRUN
    drop: DropPolicy = DropPolicy.WINDOW_DROP
    queue_len_max: Annotated[int, Meta(ge=1)] = 100_000  # per model; beyond it: overloaded
    # Consolidation: a grant takes the most preferred slot free in time for the plan, so the least
    # preferred slots stay idle and an autoscaler can release them (the coordinator ranks slots:
    # those it would release first rank last). `earliest` is the reference's round robin.
    slot_choice: SlotChoice = SlotChoice.PREFERRED
    # A plan packs onto a preferred slot only if that slot is predicted free this long before the
    # plan starts; otherwise it takes the earliest-free slot. In exact simulated time 0 is safe;
    # live batches overrun their profile by a few ms on a busy host, and a plan packed tight
    # behind one expires while another slot sat idle (seen in CI: a 78 ms batch ran 3 ms long).
    pack_guard_ns: NonNegativeNs = 0
    # Mixed fleets: plan each slot with its own class's profile, or every slot with the slowest.
    slot_profiles: SlotProfiles = SlotProfiles.PER_SLOT
    # Symphony+ (symphony-plus). The defaults here switch every mechanism off, which is the
    # faithful policy; `shard.core.policies.PLUS` holds the tuned values.
    drop_beta: Annotated[float, Meta(gt=0, le=1)] = 1.0  # WindowDrop tests a batch of beta x target
    early_dispatch: bool = False  # contention-aware early dispatch
    early_utilization_min: Annotated[float, Meta(ge=0)] = 0.8  # EWMA slot utilisation above which
    early_cost_slack: Annotated[float, Meta(ge=0)] = 0.10  # per-request cost within this of target's
    reserve_horizon_ns: NonNegativeNs = 0  # early batches leave this much room for due plans; 0: off
    utilization_alpha: Annotated[float, Meta(gt=0, le=1)] = 0.25  # EWMA weight per rate-meter bin
    # Overload guard: when the measured demand (sum of rate x least cost per request, over the
    # slots) exceeds this, the gentler drop and early dispatch are off (faithful behaviour keeps
    # batches large under overload). 0: off.
    overload_demand_min: Annotated[float, Meta(ge=0)] = 0.0
    # Lookahead (Symphony+ experiment): also go early, within `lookahead_cost_slack`, when the
    # slots predicted free by the batch's own send time are fewer than the plans due before it.
    lookahead: bool = False
    lookahead_cost_slack: Annotated[float, Meta(ge=0)] = 1.0


class ShardTiming(Protocol):
    """A shard's configured latency constants in microseconds (the cluster config's shard entry)."""

    queue_len_max: int
    ctrl_us: int
    data_us: int
    resp_us: int
    jitter_us: int
    pack_guard_us: int


def core_config_for(shard: ShardTiming) -> CoreConfig:
    """The core settings a live shard runs with; the coordinator plans with the same."""
    return CoreConfig(queue_len_max=shard.queue_len_max, ctrl_ns=shard.ctrl_us * 1000, data_ns=shard.data_us * 1000,
                      resp_ns=shard.resp_us * 1000, timer_jitter_ns=shard.jitter_us * 1000,
                      pack_guard_ns=shard.pack_guard_us * 1000)


class ModelConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A model as the core sees it: name, default SLO and the profiles it plans with.

    `profile` is the slowest over every slot class (reference §2.2) and plans any slot whose class
    has no entry in `class_profiles` (issue 16: a mixed fleet's per-class profiles)."""

    name: str
    slo_ns: PositiveNs
    profile: ModelProfile
    class_profiles: dict[str, ModelProfile] = {}
    rate_hint_rps: float = 0.0  # only planners that need a prior (nexus-warm) read it
