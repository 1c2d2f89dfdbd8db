"""Seeded simulations with stored summaries: any change in scheduling behaviour shows up here.
Regenerate deliberately with `UPDATE_GOLDEN=1 make test` and review the diff."""

import json
import os
from pathlib import Path

import msgspec
import pytest

from load.sim.kernel import SimOptions
from load.sim.search import run_report
from load.workload import load_workload

GOLDEN = Path(__file__).parent / "golden"
CASES = [("bursty", "symphony", 1.0), ("bursty", "eager", 1.0), ("bursty", "triton", 1.0),
         ("bursty", "nexus-warm", 1.0), ("example", "symphony", 8.0), ("example", "clockwork", 3.0)]


@pytest.mark.parametrize(("workload", "policy", "scale"), CASES)
def test_seeded_run_matches_its_stored_summary(workload: str, policy: str, scale: float) -> None:
    report = run_report(load_workload(workload), policy, SimOptions(scale=scale, checks=True))
    summary = json.loads(msgspec.json.encode(report))
    path = GOLDEN / f"{workload}-{policy}-{scale:g}.json"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    assert path.exists(), f"{path.name} is missing: write it with UPDATE_GOLDEN=1 and review it"
    assert summary == json.loads(path.read_text())
