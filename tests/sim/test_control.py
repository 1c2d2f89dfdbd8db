"""The control plane in virtual time (load/sim/control.py): seeded runs of coordinators, shard
followers and agents against a simulated KV with injected anomalies, under the checkers of
load/sim/control_checks.py. More seeds: `symphony sim control --seed 1 --count 5000`."""

import msgspec
import pytest

from coordinator.membership import MemberView
from load.sim import control_actors
from load.sim.control import run_control_seed
from shard.core import ownership

SEEDS_PER_CHUNK = 30
CHUNKS = 10  # 300 seeds in make test


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_every_seed_keeps_every_control_plane_invariant(chunk: int) -> None:
    failures = []
    for seed in range(chunk * SEEDS_PER_CHUNK, (chunk + 1) * SEEDS_PER_CHUNK):
        result = run_control_seed(seed)
        if not result.ok:
            failures.append(f"seed {seed}: {result.violations[:3]}\n"
                            f"  replay: symphony sim control --seed {seed} --trace")
    assert not failures, "\n".join(failures)


def test_the_same_seed_gives_the_same_run() -> None:
    first, second = run_control_seed(11, trace=True), run_control_seed(11, trace=True)
    assert msgspec.json.encode(first) == msgspec.json.encode(second)
    assert first.epochs_written > 0 and first.trace


def test_the_checkers_catch_a_shard_that_gains_before_it_releases(monkeypatch: pytest.MonkeyPatch) -> None:
    real = ownership.plan_transition

    def gain_first(holding, models, slots, hosts):
        t = real(holding, models, slots, hosts)
        gains = [s for s in t.steps if isinstance(s, (ownership.AddModel, ownership.ClaimSlot))]
        losses = [s for s in t.steps if s not in gains]
        return msgspec.structs.replace(t, steps=gains + losses)

    monkeypatch.setattr(control_actors, "plan_transition", gain_first)
    assert any(not run_control_seed(seed).ok for seed in range(40))


def test_the_checkers_catch_a_coordinator_that_reads_silence_as_departure(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old design in spirit: a member missing from one look is gone, with no read to confirm."""
    real = MemberView.suspects

    def drop_at_once(self, now_ns):
        for key in real(self, now_ns):
            del self.members[key]
        return []

    monkeypatch.setattr(MemberView, "suspects", drop_at_once)
    assert any(not run_control_seed(seed).ok for seed in range(40))
