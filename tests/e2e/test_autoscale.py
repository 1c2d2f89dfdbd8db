"""`symphony up --autoscale` on a steps load: the coordinators run the autoscaler, the local
cluster starts and stops agent processes as it decides, and a reply ledger checks that every
request is answered exactly once across the scale-downs (issue 13 §4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from load.bench.autoscale_live import run_steps

pytestmark = pytest.mark.asyncio


async def test_active_slots_follow_a_steps_load_and_no_request_is_lost_or_answered_twice(tmp_path: Path) -> None:
    steps = [(400.0, 7.0), (60.0, 9.0), (400.0, 9.0)]
    summary = await run_steps(steps, workdir=tmp_path, cold_start_s=1.0, epoch_s=1.0, start_timeout_s=40.0)
    print({k: v for k, v in summary.items() if k != "series"})
    assert summary["unanswered"] == 0 and summary["duplicates"] == 0, summary["statuses"]
    high, low, again = summary["per_step"]
    series = summary["series"]
    assert max(p["active"] for p in series if p["t_s"] < steps[0][1] + 1) >= 2, "no scale-up under the first high step"
    assert low["target_final"] < high["target_final"], "the low step did not scale down"
    assert any(p["released"] > 0 or p["draining"] > 0 for p in series), "no slot was drained"
    assert again["active_final"] >= 2 and again["active_final"] > low["active_final"], "no scale-up again"
