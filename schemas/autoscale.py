"""The autoscaler's settings (coordinator/autoscale.py decides with them): one struct that the
cluster config's `[coordinator.autoscale]` table, the coordinator and the simulator all use."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Fraction = Annotated[float, Meta(gt=0, le=1)]
Seconds = Annotated[float, Meta(ge=0)]


class AutoscaleConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What each setting does: coordinator/autoscale.py's docstring and docs/operations.md."""

    rule: Literal["demand", "hpa"] = "demand"
    target_utilization: Fraction = 0.7
    min_slots: Annotated[int, Meta(ge=0)] = 1
    max_slots: Annotated[int, Meta(ge=0)] = 0  # 0: every slot there is
    hysteresis: Annotated[float, Meta(ge=0, lt=1)] = 0.1
    up_cooldown_s: Seconds = 0.0
    down_cooldown_s: Seconds = 30.0
    down_window_s: Seconds = 60.0
    pressure_bad_rate: Annotated[float, Meta(ge=0, le=1)] = 0.01
    pressure_step: Annotated[float, Meta(gt=0)] = 0.25
    cold_start_s: Seconds = 20.0
