"""Every policy's exact batches on seeded runs, as a hash: a homogeneous fleet must schedule
byte-identically whatever the mixed-fleet code (issue 16) adds. Regenerate deliberately with
`UPDATE_GOLDEN=1` and say why in the commit."""

import hashlib
import json
import os
from pathlib import Path

import msgspec
import pytest

from load.sim.kernel import SimOptions, simulate
from load.workload import load_workload
from shard.core.policies import POLICIES

GOLDEN = Path(__file__).parent / "golden" / "batches-sha256.json"
CASES = [(w, p, s) for w, s in (("example", 4.0), ("bursty", 1.0)) for p in sorted(POLICIES)]


def _digest(workload: str, policy: str, scale: float) -> str:
    run = simulate(load_workload(workload), policy, SimOptions(scale=scale))
    payload = msgspec.msgpack.encode([run.batches, bytes(run.outcome), run.finish_ns.tobytes()])
    return hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize(("workload", "policy", "scale"), CASES)
def test_batches_match_their_stored_hash(workload: str, policy: str, scale: float) -> None:
    key = f"{workload}-{policy}-{scale:g}"
    digest = _digest(workload, policy, scale)
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("UPDATE_GOLDEN"):
        stored[key] = digest
        GOLDEN.write_text(json.dumps(stored, indent=1, sort_keys=True) + "\n")
    assert key in stored, f"{key} has no stored hash: write it with UPDATE_GOLDEN=1 and review it"
    assert digest == stored[key]
