"""The control-plane soak, short form: the demo cluster under steady load at half capacity for
about a minute (load/bench/soak.py, the same code as the 30-minute run). Nothing is killed, so
the assignment must not move a model or go empty, and every request gets exactly one reply.
The epoch counting it relies on is checked first, without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from load.bench.soak import run_soak
from load.bench.soak_epochs import EpochWatch, model_moves
from schemas.control import Assignment

# With ~35 s of cluster start and ~10 s to stop: about 1.25 minutes in all (six 5 s epochs of
# load). It was 1.75 minutes of load until issue 13's tests, and 1.0 until issue 14's brought a
# fresh clone's `make test` to 902 s of its 900; the 30-minute soak (BENCHMARKS.md §10) is where
# time-dependent faults are looked for.
SOAK_MINUTES = 0.5

# What the control plane owes this run: every answer a 200 (in time or a few ms late) or a 504
# (its deadline could not be met). A 503 means a model had no slot, was moving or lost its slot:
# the control plane's doing. The fraction within SLO is the machine's (deferred batches finish
# near the deadline, so on two shared cores a busy neighbour turns some 200s late: measured
# 98.5-99.6% alone, 89-94% beside other test suites); the soak bench reports it, this test
# prints it and does not judge it.
ANSWERS_ALLOWED = {"200", "504"}


def _assignment(epoch: int, models: dict[str, str]) -> Assignment:
    return Assignment(epoch=epoch, models=models, slots={"s0": "shard-0"} if models else {})


def test_a_model_moves_when_its_shard_changes_or_it_leaves_the_assignment() -> None:
    before = {"a": "shard-0", "b": "shard-1"}
    assert model_moves(before, {"a": "shard-0", "b": "shard-1", "c": "shard-0"}) == {}
    assert model_moves(before, {"a": "shard-1", "b": "shard-1"}) == {"a": ("shard-0", "shard-1")}
    assert model_moves(before, {"a": "shard-0"}) == {"b": ("shard-1", "")}


def test_an_empty_assignment_is_counted_and_the_next_one_is_compared_with_the_last_full_one() -> None:
    watch = EpochWatch(path=None, start_wall=0.0)
    watch.see(-1.0, 1, _assignment(3, {"a": "shard-0"}), initial=True)
    watch.see(1.0, 2, _assignment(4, {}), initial=False)
    watch.see(2.0, 3, None, initial=False, note="deleted")
    watch.see(3.0, 4, _assignment(5, {"a": "shard-0"}), initial=False)
    assert (watch.epochs_written, watch.empty, watch.models_moved) == (3, 2, 0)
    watch.see(4.0, 5, _assignment(6, {"a": "shard-1"}), initial=False)
    assert (watch.epochs_written, watch.models_moved, watch.current_epoch) == (4, 1, 6)
    assert watch.totals()["moves"] == [{"t_s": 4.0, "epoch": 6, "moved": {"a": ["shard-0", "shard-1"]}}]


def test_an_epoch_that_does_not_go_up_is_counted() -> None:
    watch = EpochWatch(path=None, start_wall=0.0)
    watch.see(-1.0, 1, _assignment(3, {"a": "shard-0"}), initial=True)
    watch.see(1.0, 2, _assignment(3, {"a": "shard-0"}), initial=False)
    assert (watch.epochs_written, watch.epoch_not_up) == (1, 1)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_soak_at_half_capacity_moves_nothing_and_answers_every_request_once(tmp_path: Path) -> None:
    summary = await run_soak(minutes=SOAK_MINUTES, out=tmp_path, command="tests/e2e/test_soak.py")
    requests, epochs = summary["requests"], summary["epochs"]
    detail = (f"requests {requests}\nepochs {epochs}\nsee {tmp_path}/epochs.jsonl and logs/ "
              f"(the soak's summary.json has every figure)")
    assert not epochs["watch_ended"], detail
    assert requests["sent"] > 0.9 * sum(summary["rates_rps"].values()) * SOAK_MINUTES * 60, detail
    assert requests["unanswered"] == 0, detail
    assert requests["duplicates"] == 0, detail
    assert epochs["empty_assignments"] == 0, detail
    assert epochs["models_moved"] == 0, detail
    assert set(requests["statuses"]) <= ANSWERS_ALLOWED, detail
    print(f"\n200 within SLO: {requests['ok_in_slo_fraction']:.4f} of {requests['sent']} requests")
    assert (tmp_path / "soak.png").exists() and (tmp_path / "summary.json").exists()
