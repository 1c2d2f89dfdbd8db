"""Mixed fleets (issue 16): the slot classes a shard has, and each model's latency on them.

A class is a device kind (the agents' `device`); `ModelConfig.class_profiles` gives a model's
profile on it, and `ModelConfig.profile` (the slowest over every class) stands in for a class
without an entry, which is always safe. The policy is "mixed" only when the classes present
give some model different latencies; otherwise it plans exactly as with one profile.
"""

from __future__ import annotations

from shard.core.config import CoreConfig
from shard.core.latency import LatencyModel
from shard.core.model_state import ModelState, least_cost_s


class SlotClasses:
    """Class names by index (in order of first appearance) and how many slots of each are up."""

    __slots__ = ("index", "names", "slots")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.slots: dict[int, int] = {}  # class -> slots up

    def add(self, name: str) -> tuple[int, bool]:
        """A slot of class `name` joins: (its class index, whether the class was absent)."""
        cls = self.index.get(name)
        if cls is None:
            cls = self.index[name] = len(self.names)
            self.names.append(name)
        up = self.slots.get(cls, 0)
        self.slots[cls] = up + 1
        return cls, up == 0

    def remove(self, cls: int) -> bool:
        """A slot of class `cls` leaves: whether that was the class's last one."""
        up = self.slots.get(cls, 0) - 1
        if up > 0:
            self.slots[cls] = up
            return False
        self.slots.pop(cls, None)
        return True

    def present(self) -> list[int]:
        return sorted(self.slots)


def class_latency(model: ModelState, name: str) -> LatencyModel:
    """The model's latency on class `name`: its profile for that class, else the slowest."""
    profile = model.config.class_profiles.get(name)
    if profile is None:
        return model.profile_latency
    latency = LatencyModel(profile)
    same = model.profile_latency
    if latency.exec_ns == same.exec_ns and latency.forward_ns == same.forward_ns:
        return same  # the same numbers (a one-class fleet names its class): plan exactly as before
    return latency


def fit_classes(model: ModelState, classes: SlotClasses, config: CoreConfig) -> None:
    """Give the model a latency for every class present, and its classes cheapest first."""
    present = classes.present()
    for cls in present:
        if cls not in model.by_class:
            model.by_class[cls] = latency = class_latency(model, classes.names[cls])
            model.class_cost_s[cls] = least_cost_s(latency, model.slo_ns, config)
    costs = model.class_cost_s
    model.order = sorted(present, key=lambda cls: (costs[cls], cls))


def differs(model: ModelState) -> bool:
    """Do the classes present give this model more than one latency table?"""
    order = model.order
    if len(order) < 2:
        return False
    first = model.by_class[order[0]].exec_ns
    return any(model.by_class[cls].exec_ns != first for cls in order[1:])


def base_latency(model: ModelState) -> LatencyModel:
    """What the queue, window and target use: the cheapest class present (else the profile)."""
    return model.by_class[model.order[0]] if model.order else model.profile_latency


def class_speeds(models: list[ModelState], classes: SlotClasses) -> float:
    """Slots up, each weighted by its class's speed relative to every model's cheapest class
    (mean over models): the capacity the overload guard divides demand by."""
    if not models:
        return float(sum(classes.slots.values()))
    total = 0.0
    for cls, up in classes.slots.items():
        speed = sum(m.class_cost_s[m.order[0]] / m.class_cost_s[cls] for m in models) / len(models)
        total += up * speed
    return total
