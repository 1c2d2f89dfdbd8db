"""Workload files: TOML describing slots, models, profiles, SLOs and rate segments.

Shared by the simulator and the live load generator. Built-in workloads live in
`load/workloads/` and can be named without a path (`example`, `many-model`, `bursty`).

A mixed fleet (issue 16) gives its slots classes, in one of two ways: `slot_speeds`, one factor
per slot (a slot of speed 0.5 runs every batch in twice the profile's time), or `[[slot_classes]]`
tables naming the slots of each class and, per model, the profile measured on that class (a model
a class does not list runs there with its default profile). A fleet whose speeds are all 1.0 has
no classes at all, so a homogeneous workload takes exactly the path it took before classes existed.
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


class SlotClass(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One device class of a mixed fleet: its slots (indices) and, per model, the profile measured
    on it (a sleep spec or a table path relative to the workload file)."""

    name: Annotated[str, Meta(min_length=1, max_length=64)]
    slots: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(min_length=1)]
    profiles: dict[str, str] = {}


class Workload(msgspec.Struct, frozen=True, kw_only=True):
    seed: int = 0
    slots: Annotated[int, Meta(ge=1)]
    models: list[ModelWorkload]
    name: str = ""
    description: str = ""
    slot_speeds: list[float] = []  # one per slot; execution time = the profile's / speed; []: all 1.0
    slot_classes: list[SlotClass] = []  # the other way to a mixed fleet; exclusive with slot_speeds

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("a workload needs at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique: {names}")
        if self.slot_speeds and self.slot_classes:
            raise ValueError("give slot_speeds or slot_classes, not both")
        if self.slot_speeds:
            _check_speeds(self.slot_speeds, self.slots)
        if self.slot_classes:
            _check_classes(self.slot_classes, self.slots, names)


def _check_speeds(speeds: list[float], slots: int) -> None:
    if len(speeds) != slots:
        raise ValueError(f"slot_speeds has {len(speeds)} entries for {slots} slots: give one per slot")
    bad = [s for s in speeds if not (math.isfinite(s) and s > 0)]
    if bad:
        raise ValueError(f"slot_speeds must be finite and > 0, got {bad}")


def _check_classes(classes: list[SlotClass], slots: int, models: list[str]) -> None:
    """Every slot in exactly one class; class names unique; profiles only for known models."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"slot_classes names must be unique: {names}")
    owner: dict[int, str] = {}
    for c in classes:
        for slot in c.slots:
            if slot >= slots:
                raise ValueError(f"slot class {c.name!r}: slot {slot} is out of range (slots = {slots})")
            if slot in owner:
                raise ValueError(f"slot {slot} is in both slot classes {owner[slot]!r} and {c.name!r}")
            owner[slot] = c.name
        unknown = sorted(set(c.profiles) - set(models))
        if unknown:
            raise ValueError(f"slot class {c.name!r}: profiles for unknown models {unknown}")
    missing = [s for s in range(slots) if s not in owner]
    if missing:
        raise ValueError(f"slots {missing} are in no slot class: slot_classes must cover every slot")


class LoadedWorkload(msgspec.Struct, frozen=True, kw_only=True):
    """A workload with its profiles resolved (files read, specs parsed).

    In a mixed fleet `slot_classes` names each of the workload's slots' class (a larger fleet
    repeats the pattern: slot i has class `slot_classes[i % len]`) and `class_profiles` holds,
    per class, every model's true profile there. A homogeneous fleet has neither."""

    workload: Workload
    profiles: dict[str, ModelProfile]
    slot_classes: list[str] = []
    class_profiles: dict[str, dict[str, ModelProfile]] = {}


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
    profiles = build_profiles(workload, path.parent)
    try:
        slot_classes, class_profiles = build_classes(workload, profiles, path.parent)
    except (ValueError, OSError) as error:
        raise ValueError(f"{path}: {error}") from None
    return LoadedWorkload(workload=workload, profiles=profiles, slot_classes=slot_classes,
                          class_profiles=class_profiles)


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


def speed_class(speed: float) -> str:
    """A speed's class name, readable in tables: 1 -> "x1.0", 0.5 -> "x0.5"."""
    return f"x{float(speed)!r}"


def build_classes(workload: Workload, profiles: dict[str, ModelProfile],
                  base_dir: Path) -> tuple[list[str], dict[str, dict[str, ModelProfile]]]:
    """Each slot's class and each class's true profiles; ([], {}) for a homogeneous fleet (no
    speeds, all speeds 1.0, no class tables)."""
    if workload.slot_speeds and any(s != 1.0 for s in workload.slot_speeds):
        names = [speed_class(s) for s in workload.slot_speeds]
        by_class = {speed_class(s): s for s in workload.slot_speeds}
        return names, {c: {m: p.at_speed(speed) for m, p in profiles.items()} for c, speed in by_class.items()}
    if not workload.slot_classes:
        return [], {}
    caps = {m.name: m.batch_size_max for m in workload.models}
    slot_class = {slot: c.name for c in workload.slot_classes for slot in c.slots}
    class_profiles: dict[str, dict[str, ModelProfile]] = {}
    for c in workload.slot_classes:
        own = dict(profiles)
        for model, spec in c.profiles.items():
            profile = load_profile(spec, base_dir)
            own[model] = profile.capped(caps[model]) if caps[model] is not None else profile
        class_profiles[c.name] = own
    return [slot_class[s] for s in range(workload.slots)], class_profiles


def with_slot_speeds(loaded: LoadedWorkload, speeds: list[float]) -> LoadedWorkload:
    """The same workload on a fleet of these speeds (one per slot; the slot count follows)."""
    workload = msgspec.structs.replace(loaded.workload, slots=len(speeds), slot_speeds=list(speeds),
                                       slot_classes=[])  # validated by __post_init__
    slot_classes, class_profiles = build_classes(workload, loaded.profiles, base_dir=Path("."))  # reads no file
    return LoadedWorkload(workload=workload, profiles=loaded.profiles, slot_classes=slot_classes,
                          class_profiles=class_profiles)


def classes_of_slots(loaded: LoadedWorkload, slots: int) -> list[str]:
    """The class of each of `slots` slots (the workload's pattern, repeated); [] when homogeneous."""
    pattern = loaded.slot_classes
    return [pattern[i % len(pattern)] for i in range(slots)] if pattern else []


def slot_mix(classes: list[str]) -> str:
    """How many slots of each class, in order of first appearance: "4x1.0 + 4x0.5"; "" when homogeneous."""
    counts: dict[str, int] = {}
    for c in classes:
        counts[c] = counts.get(c, 0) + 1
    return " + ".join(f"{n}{c}" if c.startswith("x") else f"{n} {c}" for c, n in counts.items())
