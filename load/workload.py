"""Workload files: TOML describing slots, models, profiles, SLOs and rate segments.

Shared by the simulator and the live load generator. Built-in workloads live in
`load/workloads/` and can be named without a path (`example`, `many-model`, `bursty`).
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from load.arrivals import parse_arrival
from schemas.limits import ModelName
from schemas.profile import ModelProfile, load_profile

BUILTIN_DIR = Path(__file__).parent / "workloads"


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    rps: Annotated[float, Meta(ge=0)]
    seconds: Annotated[float, Meta(gt=0)]


class Diurnal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A day's swing as bench segments: rate(t) = peak x (trough + (1 - trough) x h(t)^power),
    h(t) = (1 - cos(2 pi t / period)) / 2, starting at the trough (night), in steps of `step_s`
    (each step at its midpoint's rate). power 1 is a plain sinusoid; 2 keeps the peak shorter,
    so the mean is about half the peak (as real diurnal traffic is)."""

    peak_rps: Annotated[float, Meta(gt=0)]
    trough: Annotated[float, Meta(ge=0, le=1)] = 0.2
    period_s: Annotated[float, Meta(gt=0)] = 1200.0
    power: Annotated[float, Meta(gt=0)] = 2.0
    step_s: Annotated[float, Meta(gt=0)] = 10.0
    days: Annotated[float, Meta(gt=0)] = 1.0

    def segments(self) -> list[Segment]:
        count = max(1, round(self.days * self.period_s / self.step_s))
        out = []
        for k in range(count):
            h = (1.0 - math.cos(2.0 * math.pi * (k + 0.5) * self.step_s / self.period_s)) / 2.0
            out.append(Segment(rps=self.peak_rps * (self.trough + (1.0 - self.trough) * h**self.power),
                               seconds=self.step_s))
        return out


class ModelWorkload(msgspec.Struct, frozen=True, kw_only=True):
    name: ModelName  # a subject token in live runs: schemas.model.validate_model_name's rule
    profile: str
    slo_ms: Annotated[float, Meta(gt=0)]
    arrival: str = "poisson"
    warmup: list[Segment] = []
    bench: list[Segment]  # in a file, a `diurnal` table may stand instead (expand_shapes)
    cooldown: list[Segment] = []
    batch_size_max: Annotated[int, Meta(ge=1)] | None = None

    def __post_init__(self) -> None:
        parse_arrival(self.arrival)  # raises with a clear message
        if not self.bench:
            raise ValueError(f"model {self.name}: bench needs at least one segment (or a diurnal table)")

    @property
    def warmup_s(self) -> float:
        return sum(s.seconds for s in self.warmup)

    @property
    def bench_s(self) -> float:
        return sum(s.seconds for s in self.bench)

    @property
    def bench_mean_rps(self) -> float:
        return sum(s.rps * s.seconds for s in self.bench) / self.bench_s

    def segments(self) -> list[Segment]:
        return [*self.warmup, *self.bench, *self.cooldown]


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    seed: int = 0
    slots: Annotated[int, Meta(ge=1)]
    models: list[ModelWorkload]
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a workload needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")


class LoadedWorkload(msgspec.Struct, frozen=True, kw_only=True):
    """A workload with its profiles resolved (files read, specs parsed)."""

    workload: Workload
    profiles: dict[str, ModelProfile]


def resolve_workload_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.exists():
        return path
    builtin = BUILTIN_DIR / f"{name_or_path}.toml"
    if builtin.exists():
        return builtin
    names = ", ".join(sorted(p.stem for p in BUILTIN_DIR.glob("*.toml")))
    raise FileNotFoundError(f"no workload file {name_or_path!r}; built-in workloads: {names}")


def load_workload(name_or_path: str) -> LoadedWorkload:
    path = resolve_workload_path(name_or_path)
    with path.open("rb") as handle:
        raw = tomllib.load(handle)
    raw.setdefault("name", path.stem)
    try:
        workload = msgspec.convert(expand_shapes(raw), Workload)
    except msgspec.ValidationError as error:
        raise ValueError(f"{path}: {error}") from None
    return LoadedWorkload(workload=workload, profiles=build_profiles(workload, path.parent))


def expand_shapes(raw: dict) -> dict:
    """A model's `diurnal` table becomes its bench segments (a file gives one or the other)."""
    for model in raw.get("models", []):
        if isinstance(model, dict) and "diurnal" in model:
            if model.get("bench"):
                raise msgspec.ValidationError(f"model {model.get('name')!r}: give bench segments or diurnal, not both")
            shape = msgspec.convert(model.pop("diurnal"), Diurnal)
            model["bench"] = [msgspec.to_builtins(segment) for segment in shape.segments()]
    return raw


def build_profiles(workload: Workload, base_dir: Path) -> dict[str, ModelProfile]:
    profiles: dict[str, ModelProfile] = {}
    for model in workload.models:
        profile = load_profile(model.profile, base_dir)
        if model.batch_size_max is not None:
            profile = profile.capped(model.batch_size_max)
        profiles[model.name] = profile
    return profiles
