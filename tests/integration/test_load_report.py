"""A short live load run produces its JSON, Markdown report and plots, with sane figures."""

from __future__ import annotations

import json

import pytest

from load.generator import plan_from_workload, request_bodies, send_plan
from load.live_report import summarize, write_outputs
from tests.factories import workload
from tests.integration.conftest import SLEEP_CONFIG, running_cluster

pytestmark = pytest.mark.asyncio


async def test_a_load_run_writes_results_report_and_plots(nats_server, tmp_path) -> None:
    loaded = workload(rps=200, seconds=2, arrival="poisson", models=1)
    plan = plan_from_workload(loaded)
    plan.model_names = ["resnet_sleep"]  # the test workload's model, served by the sleep cluster
    async with running_cluster(SLEEP_CONFIG, nats_server.url, tmp_path) as (_client, _shards, _agents):
        bodies = await request_bodies(nats_server.url, plan.model_names, "application/json")
        result, slots = await send_plan(nats_server.url, plan, bodies)
    summary = summarize(plan, result, slots, {"source": "test", "senders": 1})
    out = tmp_path / "run"
    report = write_outputs(summary, plan, result, out)
    for name in ("results.json", "report.md", "latency-cdf.png", "goodput-over-time.png", "batch-sizes.png",
                 "slots-in-use.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    (model,) = saved["models"]
    assert model["offered"] == pytest.approx(400, rel=0.2)
    assert model["ok"] + model["late"] == model["offered"] and model["noreply"] == 0
    assert model["goodput_rps"] == pytest.approx(200, rel=0.2)
    assert saved["generator"]["duplicates"] == 0
    assert saved["slots"] and "resnet_sleep" in report
