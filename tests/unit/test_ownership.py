"""Ownership transitions (shard/core/ownership.py): at every step of every transition, every slot
in the shard's core can run every model in it, including when assignments swap host classes."""

from hypothesis import given, settings
from hypothesis import strategies as st

from shard.core.ownership import (
    AddModel,
    ClaimSlot,
    Holding,
    RemoveModel,
    RemoveSlot,
    apply_step,
    hosting_violations,
    plan_release,
    plan_transition,
)

JAX = frozenset({"mlp", "cnn", "encoder"})
SLEEP = frozenset({"resnet_sleep"})
HOSTS = {"jax-s0": JAX, "jax-s1": JAX, "sleep-s0": SLEEP, "sleep-s1": SLEEP}


def run(holding: Holding, models: frozenset[str], slots: frozenset[str], hosts=HOSTS, granted=lambda s: True):
    """Apply a transition step by step, checking the rule after each step."""
    transition = plan_transition(holding, models, slots, hosts)
    for step in transition.steps:
        holding = apply_step(holding, step, granted(step.slot) if isinstance(step, ClaimSlot) else True)
        assert hosting_violations(holding, hosts) == [], f"after {step}: {holding}"
    return holding.__class__(models=holding.models, slots=holding.slots, releasing=transition.releasing), transition


def test_an_empty_assignment_then_a_swap_of_host_classes_never_puts_a_model_on_a_slot_that_cannot_run_it() -> None:
    """The sequence behind `slot sleep-0-s0 does not host cnn`: JAX models on JAX slots, an
    assignment without anything, then the sleep model and sleep slots half a second later."""
    holding = Holding(models=JAX, slots=frozenset({"jax-s0", "jax-s1"}))
    holding, empty = run(holding, frozenset(), frozenset())
    assert empty.releasing == frozenset(), "no slot is left to run them: they leave at once"
    assert holding.models == frozenset() and holding.slots == frozenset()
    holding, swap = run(holding, SLEEP, frozenset({"sleep-s0", "sleep-s1"}))
    assert holding.models == SLEEP and holding.slots == frozenset({"sleep-s0", "sleep-s1"})


def test_a_direct_swap_releases_before_it_gains() -> None:
    holding = Holding(models=JAX, slots=frozenset({"jax-s0", "jax-s1"}))
    transition = plan_transition(holding, SLEEP, frozenset({"sleep-s0"}), HOSTS)
    kinds = [type(step) for step in transition.steps]
    assert kinds == [RemoveSlot, RemoveSlot, RemoveModel, RemoveModel, RemoveModel, AddModel, ClaimSlot]
    assert transition.releasing == frozenset()


def test_a_lost_model_is_kept_for_the_grace_only_while_every_remaining_slot_runs_it() -> None:
    holding = Holding(models=frozenset({"mlp", "cnn"}), slots=frozenset({"jax-s0", "jax-s1"}))
    holding, transition = run(holding, frozenset({"mlp"}), frozenset({"jax-s0"}))
    assert transition.releasing == {"cnn"} and holding.models == {"mlp", "cnn"}
    # The next epoch brings a sleep slot: the kept model cannot stay beside it.
    hosts = {**HOSTS, "mixed": frozenset({"mlp"})}
    holding, transition = run(holding, frozenset({"mlp"}), frozenset({"jax-s0", "mixed"}), hosts)
    assert "cnn" not in holding.models and transition.releasing == frozenset()
    assert plan_release(holding, frozenset({"cnn"}), frozenset({"mlp"})) == []


def test_a_model_given_back_during_its_grace_stays() -> None:
    holding = Holding(models=frozenset({"mlp", "cnn"}), slots=frozenset({"jax-s0"}), releasing=frozenset({"cnn"}))
    holding, transition = run(holding, frozenset({"mlp", "cnn"}), frozenset({"jax-s0"}))
    assert transition.steps == [] and transition.releasing == frozenset()
    assert plan_release(holding, frozenset({"cnn"}), frozenset({"mlp", "cnn"})) == []


def test_an_assigned_slot_that_cannot_run_a_model_is_refused_not_claimed() -> None:
    transition = plan_transition(Holding(), frozenset({"mlp"}), frozenset({"jax-s0", "sleep-s0"}), HOSTS)
    assert transition.refused_slots == ["sleep-s0"]
    assert ClaimSlot("sleep-s0") not in transition.steps


def test_a_claim_refused_leaves_the_slot_out() -> None:
    holding, _ = run(Holding(), frozenset({"mlp"}), frozenset({"jax-s0", "jax-s1"}), granted=lambda s: s == "jax-s0")
    assert holding.slots == {"jax-s0"}


SLOTS = ["s0", "s1", "s2", "s3", "s4"]
MODELS = ["m0", "m1", "m2", "m3"]


@st.composite
def hosts_and_assignments(draw):
    hosts = {s: frozenset(draw(st.sets(st.sampled_from(MODELS), min_size=1))) for s in SLOTS}
    steps = draw(st.lists(st.tuples(st.sets(st.sampled_from(MODELS)), st.sets(st.sampled_from(SLOTS)),
                                    st.sets(st.sampled_from(SLOTS)), st.booleans()), min_size=1, max_size=8))
    return hosts, steps


@settings(max_examples=300, deadline=None)
@given(hosts_and_assignments())
def test_any_sequence_of_assignments_keeps_every_slot_able_to_run_every_model(case) -> None:
    """Assignments (even ones a coordinator would never write), refused claims, slots lost
    between epochs and grace periods ending in between: the rule holds at every step."""
    hosts, epochs = case
    holding = Holding()
    for models, slots, refused, grace_ends in epochs:
        holding, transition = run(holding, frozenset(models), frozenset(slots), hosts,
                                  granted=lambda s, refused=refused: s not in refused)
        for slot in sorted(refused & holding.slots):  # lost later: the watchdog removes it
            holding = apply_step(holding, RemoveSlot(slot))
        if grace_ends:
            for step in plan_release(holding, holding.releasing, frozenset(models)):
                holding = apply_step(holding, step)
        assert hosting_violations(holding, hosts) == []
        assert holding.releasing <= holding.models
