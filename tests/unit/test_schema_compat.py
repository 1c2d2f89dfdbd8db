"""Wire compatibility (STYLE §9): bytes written by version 1 of the hot-path messages still
decode, and decoding is strict about types."""

import msgspec
import pytest

from schemas.plan import (
    BatchPlan,
    CompletionReport,
    PlanRequest,
    ReportStatus,
    plan_decoder,
    plan_encoder,
    report_decoder,
)

# Version-1 encodings, stored once; a later field must be appended with a default so these decode.
PLAN_V1 = bytes.fromhex(
    "990107a773686172642d3001a27330a16d91960bae5f494e424f582e6162632e313233c40d7b22696e70757473223a5b5d7d"
    "b06170706c69636174696f6e2f6a736f6ea3726964cd0fa0ce3b9aca00cd1388"
)
REPORT_V1 = bytes.fromhex("99010aa2733103cd0c8c5f4000a4646f6e65")


def test_plan_v1_bytes_still_decode() -> None:
    plan = plan_decoder.decode(PLAN_V1)
    assert plan.plan_id == 7 and plan.shard_id == "shard-0" and plan.slot_id == "s0"
    assert plan.requests[0].reply == "_INBOX.abc.123" and plan.requests[0].client_request_id == "rid"


def test_report_v1_bytes_still_decode() -> None:
    report = report_decoder.decode(REPORT_V1)
    assert (report.plan_id, report.slot_id, report.batch_size, report.status) == (10, "s1", 3, "done")


def test_report_statuses_are_still_the_version_1_strings_on_the_wire() -> None:
    report = report_decoder.decode(REPORT_V1)
    assert report.status is ReportStatus.DONE
    assert plan_encoder.encode(report) == REPORT_V1  # the enum encodes to the very bytes v1 sent
    for text in ("done", "expired", "failed", "handed_back", "withheld"):  # every status v1 sent, as v1 sent it
        old = msgspec.msgpack.encode([1, 10, "s1", 3, 3212, 95, 0, 3, text])
        decoded = report_decoder.decode(old)
        assert decoded.status == text and isinstance(decoded.status, ReportStatus)
        assert plan_encoder.encode(decoded) == old
    assert {s.value for s in ReportStatus} == {"done", "expired", "failed", "handed_back", "withheld"}


def test_a_report_status_this_version_does_not_know_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        report_decoder.decode(msgspec.msgpack.encode([1, 10, "s1", 3, 3212, 95, 0, 3, "paused"]))


def test_round_trip_and_strict_types() -> None:
    plan = BatchPlan(version=1, plan_id=1, shard_id="a", epoch=0, slot_id="s", model="m",
                     requests=[PlanRequest(1, "r", b"{}", "application/json")], exec_at_ns=5, deadline_us=9)
    assert plan_decoder.decode(plan_encoder.encode(plan)) == plan
    with pytest.raises(msgspec.ValidationError):
        plan_decoder.decode(msgspec.msgpack.encode([1, "not an int", "a", 0, "s", "m", [], 5, 9]))
    assert isinstance(report_decoder.decode(msgspec.msgpack.encode(CompletionReport(1, 2, "s", 1, 5, 0, 1, 0))),
                      CompletionReport)


def test_grafana_dashboard_uses_only_documented_metrics() -> None:
    import json
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    documented = set(re.findall(r"`(symphony_[a-z_]+)`", (root / "docs" / "metrics.md").read_text()))
    dashboard = json.loads((root / "ops" / "grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"symphony_[a-z_]+", t["expr"])}
    unknown = {m for m in used if m not in documented and re.sub(r"_(bucket|sum|count)$", "", m) not in documented}
    assert not unknown, sorted(unknown)
