"""The fault-injection suite, short form (part of `make test`): each fault on its own, seeded, at
80% of capacity through real processes. The long form (both loads, longer runs, a report with
plots) is `python -m tests.faults`."""

from __future__ import annotations

import pytest

from tests.faults.harness import FAULTS, run_fault

pytestmark = pytest.mark.asyncio


@pytest.mark.parametrize("name", list(FAULTS))
async def test_fault(name: str, tmp_path) -> None:
    report = await run_fault(FAULTS[name], load=0.8, seconds=8.0, fault_at_s=3.0, heal_at_s=5.5, tmp=tmp_path)
    print(f"\n{name}: outcomes={report.outcomes} duplicates={report.duplicates} unanswered={report.unanswered} "
          f"detect={report.detect_s} recover={report.recover_s} expired_device_s={report.expired_device_s} "
          f"withheld={report.withheld_plans} kv={report.kv_members_live}")
    assert report.passed, report.problems
