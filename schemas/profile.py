"""Model latency profiles: the per-batch cost table every scheduler decision rests on.

A profile is wire data (agents publish it, the coordinator stores it), so it lives here as a
msgspec Struct in microseconds, as profilers write it. Schedulers convert it once, at the edge,
into integer nanoseconds (`shard.core.latency.LatencyModel`).

Reference §2: `l(b)` is mean+std; pre/post are counted once per batch; the shard's view of a model
is the slowest profile among its slots (`merge_slowest`) made monotone (`monotone`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from schemas.limits import BATCH_SIZE_LIMIT, LatencyUs, Text, Version

SLEEP_BATCH_SIZE_MAX = 499  # reference §2.4: sleep profiles cover b = 1..499

PositiveUs = LatencyUs  # finite, at least 0, at most an hour
LatencyTable = Annotated[list[PositiveUs], Meta(min_length=1, max_length=BATCH_SIZE_LIMIT)]


class ModelProfile(msgspec.Struct, frozen=True, kw_only=True):
    """Measured (or synthetic) latency of one model on one device, in microseconds.

    `forward_mean_us[i]` is the forward latency of a batch of `i + 1`; the table is contiguous
    from batch 1, so its length is the largest batch the profile covers.
    """

    version: Version = 1
    profile_id: Text = ""
    device: Text = "generic"
    forward_mean_us: LatencyTable
    forward_std_us: LatencyTable
    pre_mean_us: PositiveUs = 0.0
    pre_std_us: PositiveUs = 0.0
    post_mean_us: PositiveUs = 0.0
    post_std_us: PositiveUs = 0.0

    def __post_init__(self) -> None:
        if not self.forward_mean_us:
            raise ValueError("a profile needs at least batch size 1")
        if len(self.forward_mean_us) != len(self.forward_std_us):
            raise ValueError("forward mean and std tables differ in length")

    @property
    def batch_size_max(self) -> int:
        return len(self.forward_mean_us)

    def forward_us(self, batch_size: int) -> float:
        """l(b) = mean + std, reference §2.2."""
        return self.forward_mean_us[batch_size - 1] + self.forward_std_us[batch_size - 1]

    @property
    def pre_us(self) -> float:
        return self.pre_mean_us + self.pre_std_us

    @property
    def post_us(self) -> float:
        return self.post_mean_us + self.post_std_us

    def capped(self, batch_size_max: int) -> ModelProfile:
        """The same profile limited to batches of at most `batch_size_max`."""
        if batch_size_max < 1:
            raise ValueError("batch_size_max must be at least 1")
        return msgspec.structs.replace(
            self,
            forward_mean_us=self.forward_mean_us[:batch_size_max],
            forward_std_us=self.forward_std_us[:batch_size_max],
        )

    def plus_per_item(self, per_item_us: float) -> ModelProfile:
        """The profile with a cost per request added (the agent's decode, encode and reply)."""
        means = [m + per_item_us * (b + 1) for b, m in enumerate(self.forward_mean_us)]
        return msgspec.structs.replace(self, forward_mean_us=means)

    def at_speed(self, speed: float) -> ModelProfile:
        """The profile of a device `speed` times as fast (execution time divided by `speed`): a
        slot class in a mixed fleet (issue 16). Speed 1.0 returns this very profile, so a
        homogeneous fleet's arithmetic is untouched."""
        if not speed > 0:
            raise ValueError(f"a slot speed must be positive, got {speed!r}")
        if speed == 1.0:
            return self
        return msgspec.structs.replace(
            self,
            forward_mean_us=[m / speed for m in self.forward_mean_us],
            forward_std_us=[s / speed for s in self.forward_std_us],
            pre_mean_us=self.pre_mean_us / speed, pre_std_us=self.pre_std_us / speed,
            post_mean_us=self.post_mean_us / speed, post_std_us=self.post_std_us / speed,
        )

    def merge_slowest(self, other: ModelProfile) -> ModelProfile:
        """Per batch entry keep the slower of the two (reference §2.2, MergeProfileBySlowest).

        An entry is replaced when the other has a larger mean or a larger mean+std. Batches
        beyond this profile's range are taken from the other.
        """
        n = max(self.batch_size_max, other.batch_size_max)
        means: list[float] = []
        stds: list[float] = []
        for i in range(n):
            mine = _entry(self.forward_mean_us, self.forward_std_us, i)
            theirs = _entry(other.forward_mean_us, other.forward_std_us, i)
            mean, std = _slower(mine, theirs)
            means.append(mean)
            stds.append(std)
        pre = _slower((self.pre_mean_us, self.pre_std_us), (other.pre_mean_us, other.pre_std_us))
        post = _slower(
            (self.post_mean_us, self.post_std_us), (other.post_mean_us, other.post_std_us)
        )
        return _profile(self.profile_id or other.profile_id, "slowest", means, stds, pre, post)

    def monotone(self) -> ModelProfile:
        """Running maximum over batch size (reference §2.2, ForceMonotonicity).

        Schedulers rely on a larger batch never being faster; real profiles break this by noise.
        """
        means = list(self.forward_mean_us)
        stds = list(self.forward_std_us)
        for b in range(1, len(means)):
            if means[b] < means[b - 1] or means[b] + stds[b] < means[b - 1] + stds[b - 1]:
                means[b], stds[b] = means[b - 1], stds[b - 1]
        return msgspec.structs.replace(self, forward_mean_us=means, forward_std_us=stds)


def _entry(means: list[float], stds: list[float], i: int) -> tuple[float, float] | None:
    return (means[i], stds[i]) if i < len(means) else None


def _slower(
    mine: tuple[float, float] | None, theirs: tuple[float, float] | None
) -> tuple[float, float]:
    if mine is None:
        assert theirs is not None
        return theirs
    if theirs is None:
        return mine
    if theirs[0] > mine[0] or theirs[0] + theirs[1] > mine[0] + mine[1]:
        return theirs
    return mine


_SLEEP_SPEC = re.compile(r"^sleep[:#](\d+(?:\.\d+)?(?:,\d+(?:\.\d+)?){1,3})$")


def profile_from_sleep_spec(
    spec: str, batch_size_max: int = SLEEP_BATCH_SIZE_MAX
) -> ModelProfile:
    """`sleep:<slope_us>,<intercept_us>[,<pre_us>,<post_us>]` -> a linear profile, std 0.

    Reference §2.4: forward(b) = slope*b + intercept for b = 1..499. `sleep#` (the reference's
    spelling) is accepted too.
    """
    match = _SLEEP_SPEC.match(spec.strip())
    if match is None:
        raise ValueError(
            f"bad sleep profile {spec!r}: expected sleep:<slope_us>,<intercept_us>[,<pre_us>,<post_us>]"
        )
    numbers = [float(x) for x in match.group(1).split(",")]
    if len(numbers) == 3:
        raise ValueError(f"bad sleep profile {spec!r}: give both pre_us and post_us or neither")
    slope, intercept = numbers[0], numbers[1]
    pre, post = (numbers[2], numbers[3]) if len(numbers) == 4 else (0.0, 0.0)
    means = [slope * b + intercept for b in range(1, batch_size_max + 1)]
    return ModelProfile(
        profile_id=spec.strip(),
        device="sleep",
        forward_mean_us=means,
        forward_std_us=[0.0] * batch_size_max,
        pre_mean_us=pre,
        post_mean_us=post,
    )


def profile_from_table(text: str) -> ModelProfile:
    """Parse a profiler table in either nexuslb format (reference §2.1).

    Current format: id, device, uuid, "Forward latency", a 6-column header and rows, then
    "Preprocess latency (mean,std,repeat)" and "Postprocess latency ...", one row each.
    Older format: no uuid line, 4-column rows and `m,s` pre/post rows. Rows must be batch
    1, 2, 3, ... contiguous.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise ValueError("profile table is too short")
    profile_id, device = lines[0], lines[1]
    try:
        forward_at = next(i for i, line in enumerate(lines) if line.lower().startswith("forward"))
        pre_at = next(i for i, line in enumerate(lines) if line.lower().startswith("preprocess"))
        post_at = next(i for i, line in enumerate(lines) if line.lower().startswith("postprocess"))
    except StopIteration:
        raise ValueError("profile table lacks a Forward, Preprocess or Postprocess section") from None
    means: list[float] = []
    stds: list[float] = []
    for row in lines[forward_at + 1 : pre_at]:
        if not row[0].isdigit():
            continue  # the column header
        cells = row.split(",")
        batch = int(cells[0])
        if batch != len(means) + 1:
            raise ValueError(f"profile rows must be contiguous from batch 1; got batch {batch}")
        means.append(float(cells[1]))
        stds.append(float(cells[2]))
    pre = _mean_std_row(lines[pre_at + 1 : post_at])
    post = _mean_std_row(lines[post_at + 1 :])
    return _profile(profile_id, device, means, stds, pre, post)


def _profile(
    profile_id: str, device: str, means: list[float], stds: list[float],
    pre: tuple[float, float], post: tuple[float, float],
) -> ModelProfile:
    return ModelProfile(
        profile_id=profile_id, device=device, forward_mean_us=means, forward_std_us=stds,
        pre_mean_us=pre[0], pre_std_us=pre[1], post_mean_us=post[0], post_std_us=post[1],
    )


def _mean_std_row(rows: list[str]) -> tuple[float, float]:
    for row in rows:
        if row[0].isdigit():
            cells = row.split(",")
            return float(cells[0]), float(cells[1])
    raise ValueError("profile pre/post section has no values")


def load_profile(spec: str, base_dir: Path | None = None) -> ModelProfile:
    """A profile from a workload's `profile` field: a sleep spec or a path to a table file."""
    if spec.startswith(("sleep:", "sleep#")):
        return profile_from_sleep_spec(spec)
    path = Path(spec)
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    return profile_from_table(path.read_text())
