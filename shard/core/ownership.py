"""How a shard moves from the models and slots it holds to those a new assignment gives it
(issue 11 §2). Pure: the live follower (shard/service/follower.py) and the control-plane
simulator (load/sim/control.py) carry out the same steps.

Idea. The scheduling core treats its slots as interchangeable: any slot may be granted to any
model it holds. So at every moment, every slot in the core must be able to run every model in
the core. The plan first works out where the shard ends up (the models it is given, plus the
models it lost but may keep serving for a grace period while their new owner subscribes; the
slots it is given that can run all of those) and then gets there by only shrinking before it
grows: slots leave, then models leave, then models join, then slots join. Each intermediate
state is a subset of the old state or of the final one, both of which keep the rule, so every
intermediate state keeps it too. A model lost keeps its grace only if every final slot runs it;
an assigned slot that cannot run every final model is refused, never claimed.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class Holding(msgspec.Struct, frozen=True, kw_only=True):
    """What the shard's core holds now."""

    models: frozenset[str] = frozenset()
    slots: frozenset[str] = frozenset()  # usable: owned and not declared lost
    releasing: frozenset[str] = frozenset()  # lost models kept for the grace period (subset of models)


class RemoveSlot(msgspec.Struct, frozen=True):
    slot: str


class RemoveModel(msgspec.Struct, frozen=True):
    """Stop taking the model's requests and hand back what is still queued."""

    model: str


class AddModel(msgspec.Struct, frozen=True):
    model: str


class ClaimSlot(msgspec.Struct, frozen=True):
    """Claim the slot from its agent at the epoch; only a granted claim adds it to the core."""

    slot: str


Step = RemoveSlot | RemoveModel | AddModel | ClaimSlot


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    steps: list[Step]
    releasing: frozenset[str]  # lost models kept until the grace period ends
    refused_slots: list[str] = []  # assigned, but unable to run every model: never claimed


def plan_transition(holding: Holding, models: frozenset[str], slots: frozenset[str],
                    hosts: Mapping[str, frozenset[str]]) -> Transition:
    """Steps from `holding` to the assignment's `models` and `slots` for this shard; `hosts`
    maps each slot to the models it can run."""
    usable = frozenset(s for s in slots if models <= hosts.get(s, frozenset()))
    graceful = frozenset(m for m in holding.models - models
                         if usable and all(m in hosts.get(s, frozenset()) for s in usable))
    final_models = models | graceful
    steps: list[Step] = [RemoveSlot(s) for s in sorted(holding.slots - usable)]
    steps += [RemoveModel(m) for m in sorted(holding.models - final_models)]
    steps += [AddModel(m) for m in sorted(final_models - holding.models)]
    steps += [ClaimSlot(s) for s in sorted(usable - holding.slots)]
    return Transition(steps=steps, releasing=graceful, refused_slots=sorted(slots - usable))


def plan_release(holding: Holding, names: frozenset[str], models: frozenset[str]) -> list[Step]:
    """At the end of a grace period: the models in `names` still held and still not given back
    to this shard (`models`, the latest assignment's) leave."""
    return [RemoveModel(m) for m in sorted(names & holding.models - models)]


def apply_step(holding: Holding, step: Step, granted: bool = True) -> Holding:
    """The holding after one step (a claim adds its slot only when `granted`)."""
    match step:
        case RemoveSlot(slot):
            return msgspec.structs.replace(holding, slots=holding.slots - {slot})
        case RemoveModel(model):
            return msgspec.structs.replace(holding, models=holding.models - {model},
                                           releasing=holding.releasing - {model})
        case AddModel(model):
            return msgspec.structs.replace(holding, models=holding.models | {model})
        case ClaimSlot(slot):
            return msgspec.structs.replace(holding, slots=holding.slots | {slot}) if granted else holding
    raise AssertionError(f"unknown step {step!r}")


def hosting_violations(holding: Holding, hosts: Mapping[str, frozenset[str]]) -> list[tuple[str, str]]:
    """(slot, model) pairs where a slot in the core cannot run a model in the core."""
    return [(s, m) for s in sorted(holding.slots) for m in sorted(holding.models)
            if m not in hosts.get(s, frozenset())]
